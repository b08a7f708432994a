"""GPU tests: collected everywhere, run only where torch sees a CUDA GPU (`make gpu-check`).

Every test under tests/gpu is marked `gpu` here, so `pytest -m gpu` selects exactly them and
`pytest -m "not gpu"` leaves them out. Without a CUDA GPU each one is skipped with a reason
that starts with GPU_SKIP_PREFIX: a skip for a missing accelerator is expected on the CPU
machines CI runs on, unlike a skip for a missing service (Postgres, Redis, docker), and the
prefix lets a CI check tell the two apart. Under the GPU check itself
(GPU_CHECK_REQUIRE_GPU=1, set by scripts/gpu-check.sh) a missing GPU is an error instead: a
GPU machine whose driver torch cannot reach must not pass the check on five skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

GPU_SKIP_PREFIX = "gpu:"
GPU_SKIP_REASON = (
    f"{GPU_SKIP_PREFIX} torch sees no CUDA GPU on this machine; these tests run on a GPU "
    "machine (make gpu-check, docs/gpu.md)"
)
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = torch.cuda.is_available()
    ours = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if ours and not has_gpu and os.environ.get("GPU_CHECK_REQUIRE_GPU") == "1":
        raise pytest.UsageError("GPU_CHECK_REQUIRE_GPU=1 but torch sees no CUDA GPU")
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if not has_gpu:
            item.add_marker(pytest.mark.skip(reason=GPU_SKIP_REASON))
