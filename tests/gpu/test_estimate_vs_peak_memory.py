"""The launch estimate's memory for a run against what the run really takes on the GPU."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import Team
from tests.gpu.support import varied_text
from workers.engine import NullCallbacks, TrainConfig, train

TOLERANCE = 0.20
SHAPE = {"batch_size": 32, "block_size": 512, "precision": "fp32"}


def test_the_launch_estimate_is_within_a_fifth_of_the_real_peak_gpu_memory(
    team: Team, tmp_path: Path
) -> None:
    answer = team.owner.post(
        "/api/v1/runs/estimate", json={"base_model": "scratch-small", "config": SHAPE}
    )
    assert answer.status_code == 200, answer.text
    estimated = answer.json()["total_bytes"]

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(varied_text(2000))
    config = TrainConfig(
        output_dir=tmp_path / "out",
        train_file=corpus,
        train_format="text",
        base_model="scratch-small",
        max_steps=3,
        eval_split=0.0,
        device="cuda",
        **SHAPE,
    )
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = train(config, NullCallbacks())
    peak = torch.cuda.max_memory_allocated()
    assert result.global_step == 3
    error = abs(estimated - peak) / peak
    assert error <= TOLERANCE, (
        f"estimate {estimated / 2**30:.2f} GiB vs real peak {peak / 2**30:.2f} GiB: "
        f"off by {error:.0%} (allowed {TOLERANCE:.0%})"
    )
