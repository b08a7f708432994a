"""A run whose loss becomes NaN or infinite fails at once with advice, instead of training on
and registering a garbage model (seen on an H200: a bf16 run logged `loss nan` for 200 steps and
then "succeeded")."""

from __future__ import annotations

import math

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from workers.engine.callbacks import NullCallbacks
from workers.engine.reporting import ReportingCallback, TrainingDiverged, check_finite_loss


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_training_loss_stops_the_run_with_the_step_and_advice(
    loss: float, tmp_path
) -> None:
    callback = ReportingCallback(NullCallbacks(), log_every=1)
    state = TrainerState()
    state.global_step = 10
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(TrainingDiverged, match=r"loss became .* at step 10: the model diverged"):
        callback.on_log(args, state, TrainerControl(), logs={"loss": loss})


def test_fp16_divergence_advises_bf16_or_fp32_first() -> None:
    with pytest.raises(TrainingDiverged, match="use bf16 or fp32 instead of fp16"):
        check_finite_loss(math.nan, 3, "fp16")


def test_a_finite_loss_passes() -> None:
    check_finite_loss(2.5, 1, "bf16")
