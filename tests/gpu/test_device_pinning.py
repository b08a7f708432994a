"""A worker's GPU slot (LLMIDE_WORKER_GPUS → CUDA_VISIBLE_DEVICES) reaches the training process."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.e2e.test_full_path import corpus
from tests.gpu.support import product


def test_a_worker_pinned_to_a_gpu_trains_its_run_on_that_gpu(tmp_path: Path) -> None:
    last = torch.cuda.device_count() - 1  # on a machine of several GPUs, not the default one
    with product(tmp_path / "data", LLMIDE_WORKER_GPUS=str(last)) as app:
        dataset = app.upload("c.jsonl", corpus(400))
        run_id = app.launch(dataset, max_steps=30, block_size=32, logging_steps=1)
        run = app.finished(run_id, timeout=240)
        assert run["status"] == "succeeded", run["error"]
        events = app.events(run_id)
        # The slot's GPU is the only one the process sees, so it is its cuda:0.
        assert any(m.startswith("training on cuda:0") for m in events), events
        sampled = [p["values"] for p in app.metric_points(run_id) if "gpu_memory_mb" in p["values"]]
        assert sampled, "NVML sampled the pinned GPU while the run trained"


def test_a_worker_pinned_to_a_gpu_that_is_not_there_hides_every_gpu_from_its_run(
    tmp_path: Path,
) -> None:
    missing = torch.cuda.device_count()  # one past the last GPU
    with product(tmp_path / "data", LLMIDE_WORKER_GPUS=str(missing)) as app:
        dataset = app.upload("c.jsonl", corpus(400))
        run_id = app.launch(dataset, max_steps=5, block_size=32)
        run = app.finished(run_id, timeout=240)
        events = app.events(run_id)
    # CUDA_VISIBLE_DEVICES names no real GPU: the training process sees none and, asked for
    # "auto", trains on the CPU. A process that ignored the slot would have found the GPU.
    assert run["status"] == "succeeded", run["error"]
    assert any(m.startswith("training on cpu") for m in events), events
    assert not any(m.startswith("training on cuda") for m in events), events
