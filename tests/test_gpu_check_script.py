"""scripts/gpu-check.sh's plumbing, in its dry run: steps, time limits, budget and summary.

The GPU steps themselves run only on a GPU machine (docs/gpu.md); here each step runs
GPU_CHECK_DRY_COMMAND in its place, through the same timeout, budget and summary code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("facts", "vllm_facts", "train", "serve_vllm", "serve_transformers", "gpu_tests")
CAPS = ("FACTS", "TRAIN", "VLLM", "TRANSFORMERS", "TESTS")


def dry_run(tmp_path: Path, **env: str) -> tuple[int, str, str]:
    """Run the script in its dry mode with OUT set; (exit code, stdout, $OUT/gpu-check.md)."""
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh")],
        env={
            **os.environ,
            "GPU_CHECK_DRY_RUN": "1",
            "OUT": str(out),
            "GPU_CHECK_LOG_DIR": str(tmp_path / "logs"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = (out / "gpu-check.md").read_text() if (out / "gpu-check.md").exists() else ""
    return done.returncode, done.stdout, summary


def test_the_dry_run_writes_every_step_and_its_figures_to_the_summary_in_out(
    tmp_path: Path,
) -> None:
    code, stdout, summary = dry_run(tmp_path, GPU_CHECK_DRY_COMMAND="echo some_figure=42")
    assert code == 0, stdout
    assert "DRY RUN" in summary
    for step in STEPS:
        assert f"| {step} | passed |" in summary
        assert f"| {step} | some_figure | 42 |" in summary
    assert summary in stdout  # the summary is printed too
    with tarfile.open(tmp_path / "out" / "gpu-check-logs.tar.gz") as logs:
        assert {f"./{step}.log" for step in STEPS} <= set(logs.getnames())


def test_a_step_that_hangs_is_cut_off_and_recorded_and_the_next_steps_still_run(
    tmp_path: Path,
) -> None:
    caps = {f"GPU_CHECK_T_{cap}": "1" for cap in CAPS}
    code, stdout, summary = dry_run(
        tmp_path, GPU_CHECK_DRY_COMMAND="echo started; sleep 60", **caps
    )
    assert code == 1
    for step in STEPS:
        assert f"| {step} | timed out after 1s |" in summary, summary
        assert f"## {step}: timed out after 1s" in summary  # with the log's last lines
    assert "started" in summary


def test_a_failing_step_is_recorded_with_its_exit_code_and_the_check_fails(
    tmp_path: Path,
) -> None:
    code, _, summary = dry_run(tmp_path, GPU_CHECK_DRY_COMMAND="echo boom >&2; exit 3")
    assert code == 1
    assert "| train | failed (exit 3) |" in summary
    assert "boom" in summary


def test_steps_are_not_started_once_the_budget_is_spent(tmp_path: Path) -> None:
    code, _, summary = dry_run(tmp_path, GPU_CHECK_BUDGET_S="10", GPU_CHECK_MIN_STEP_S="15")
    assert code == 1
    for step in STEPS:
        assert f"| {step} | not run: budget spent |" in summary


def test_the_gpu_check_fails_the_gpu_tests_on_a_machine_without_a_gpu() -> None:
    """Under scripts/gpu-check.sh (GPU_CHECK_REQUIRE_GPU=1) a missing GPU is an error, not
    five skips that would let a GPU machine with a broken driver pass the check."""
    if torch.cuda.is_available():
        pytest.skip("gpu: this machine has a GPU, so the GPU tests would really run")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
         "-m", "gpu", str(ROOT / "tests" / "gpu")],
        env={**os.environ, "GPU_CHECK_REQUIRE_GPU": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "torch sees no CUDA GPU" in done.stdout + done.stderr
