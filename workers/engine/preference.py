"""Preference tuning with TRL: DPO (sigmoid or IPO loss), ORPO, SimPO and KTO, full or LoRA.

The same run shape as supervised training (trainer.py): the run's data split, the tokenizer
and model built the same way, the same arguments, checkpoints published atomically, the same
ReportingCallback streaming metrics — only the Trainer is TRL's. Which reference a method
compares against:

- DPO and KTO need the policy's starting point. A LoRA run passes the base plus a LoRA config
  to TRL and no reference: TRL then computes the reference with the adapters disabled, so there
  is no second copy of the weights. A full run keeps a frozen copy of the starting weights
  (taken before a resumed checkpoint is loaded over the policy, so the reference never moves).
- ORPO and SimPO are reference-free.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, PrinterCallback, set_seed

from workers.engine.callbacks import TrainCallbacks
from workers.engine.config import TrainConfig
from workers.engine.data import Preference, Row, Unpaired
from workers.engine.device import (
    configure_cpu_threads,
    default_cpu_threads,
    pinned_arguments_class,
    plan_device,
    process_world,
    resolve_precision,
)
from workers.engine.distributed import StopVote
from workers.engine.models import lora_config
from workers.engine.reporting import ReportingCallback
from workers.engine.system_metrics import SystemSampler
from workers.engine.trainer import (
    LOG_LINES_PER_RUN,
    AtomicCheckpointTrainer,
    Prepared,
    TrainResult,
    _build_model,
    _checkpoint_to_resume,
    _lifecycle_callbacks,
    _load_rows,
    plan_schedule,
    save_trained_model,
    tokenizer_for,
    training_kwargs,
)

# Methods that compare the policy with a reference model (the others are reference-free).
NEEDS_REFERENCE = frozenset({"dpo", "kto"})


def trl_trainer_class(task: str) -> tuple[type[Any], type[Any]]:
    """(Trainer, its config class) of TRL for a preference task."""
    if task == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig
    if task == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig
    if task == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig
    if task == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        return CPOTrainer, CPOConfig
    raise ValueError(f"not a preference task: {task!r}")


def method_arguments(config: TrainConfig) -> dict[str, Any]:
    """The method's own TRL settings from the run config (each knob the run config accepts
    for this task is used here; runs.check_fit refuses the others)."""
    task = config.resolved_task
    beta = config.resolved_beta
    if task == "dpo":
        return {"beta": beta, "loss_type": [config.dpo_loss], "max_length": config.block_size}
    if task == "kto":
        return {
            "beta": beta,
            "desirable_weight": config.kto_desirable_weight,
            "undesirable_weight": config.kto_undesirable_weight,
            "max_length": config.block_size,
        }
    if task == "orpo":
        return {"beta": beta, "max_length": config.block_size}
    # SimPO is CPO's "simpo" loss with the behaviour-cloning term off (cpo_alpha 0).
    return {
        "beta": beta,
        "loss_type": "simpo",
        "simpo_gamma": config.simpo_gamma,
        "cpo_alpha": 0.0,
        "max_length": config.block_size,
    }


def preference_records(rows: list[Row], task: str) -> list[dict[str, Any]]:
    """Rows as TRL's conversational records: {prompt, chosen, rejected}, or for KTO
    {prompt, completion, label} (a pair gives its chosen answer as desirable and its rejected
    one as undesirable)."""
    records: list[dict[str, Any]] = []
    for row in rows:
        if isinstance(row, Preference):
            if task == "kto":
                records.append({"prompt": row.prompt, "completion": row.chosen, "label": True})
                records.append({"prompt": row.prompt, "completion": row.rejected, "label": False})
            else:
                records.append(
                    {"prompt": row.prompt, "chosen": row.chosen, "rejected": row.rejected}
                )
        elif isinstance(row, Unpaired) and task == "kto":
            records.append({"prompt": row.prompt, "completion": row.completion, "label": row.label})
    return records


def _dataset(records: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(records)


def build_trainer(
    config: TrainConfig,
    *,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_records: list[dict[str, Any]],
    eval_records: list[dict[str, Any]],
    arguments: dict[str, Any],
    callbacks: list[Any],
) -> Any:
    """TRL's trainer for the run's method, checkpointing atomically like every run.

    Shared with bench/preference.py's product side; the bare-TRL side builds its own.
    """
    task = config.resolved_task
    trainer_cls, config_cls = trl_trainer_class(task)
    arguments_class: Any = pinned_arguments_class(config_cls)
    args = arguments_class(
        **arguments,
        **method_arguments(config),
        gradient_checkpointing=False,  # TRL's default; our supervised runs do not use it
        disable_dropout=True,
        dataset_num_proc=None,
    )
    extra: dict[str, Any] = {}
    if config.method != "full":
        if config.method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
        extra["peft_config"] = lora_config(model, config, "causal_lm")
    elif task in NEEDS_REFERENCE:
        extra["ref_model"] = frozen_copy(model)

    class AtomicPreferenceTrainer(AtomicCheckpointTrainer, trainer_cls):  # type: ignore[misc,valid-type]
        """TRL's trainer with the product's atomic checkpoints and token counting."""

        def _track_num_input_tokens(self, inputs: Any) -> None:
            # ORPO and SimPO (CPO) batches hold each side's own tensors, no attention_mask.
            if "attention_mask" not in inputs and "chosen_attention_mask" in inputs:
                tokens = inputs["chosen_attention_mask"].sum()
                tokens = tokens + inputs["rejected_attention_mask"].sum()
                self._pending_tokens = self._pending_tokens + tokens
                return
            super()._track_num_input_tokens(inputs)

    return AtomicPreferenceTrainer(
        model=model,
        args=args,
        train_dataset=_dataset(train_records),
        eval_dataset=_dataset(eval_records) if eval_records else None,
        processing_class=tokenizer,
        callbacks=callbacks,
        **extra,
    )


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The reference of a full DPO/KTO run: the starting weights, never trained."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def train_preference(config: TrainConfig, callbacks: TrainCallbacks) -> TrainResult:
    """One preference run to completion (or a requested stop), like trainer.train."""
    task = config.resolved_task
    world = process_world()
    device = plan_device(config.device, world)
    precision = resolve_precision(config.precision, device)
    if device.kind == "cpu":
        threads = configure_cpu_threads(
            config.cpu_threads or max(1, default_cpu_threads() // world.size)
        )
        callbacks.on_log("info", f"training on cpu with {threads} threads ({precision})")
    else:
        callbacks.on_log("info", f"training on {device.label} ({precision})")
    checkpoint = _checkpoint_to_resume(config)
    set_seed(config.seed)

    callbacks.on_log("info", "loading data")
    train_rows, eval_rows = _load_rows(config)
    train_records = preference_records(train_rows, task)
    eval_records = preference_records(eval_rows, task)
    if not train_records:
        raise ValueError(f"the training data has no rows a {task} run can read")
    callbacks.on_log(
        "info",
        f"data loaded: {len(train_records)} training and {len(eval_records)} held-out "
        + ("answers (KTO)" if task == "kto" else "preference pairs"),
    )
    source, tokenizer = tokenizer_for(config, checkpoint, train_rows, callbacks)
    prepared = Prepared(
        task="causal_lm",
        tokenizer=tokenizer,
        train_set=train_records,
        eval_set=eval_records or None,
        collator=None,
        source=source,
    )
    schedule = plan_schedule(config, len(train_records), world.size)
    model = _build_model(config, prepared, checkpoint)
    callbacks.on_log(
        "info", f"model {config.base_model} for {task}: {model.num_parameters():,} parameters"
    )
    reference = "none (reference-free)"
    if task in NEEDS_REFERENCE:
        reference = (
            "the base with the adapters disabled"
            if config.method != "full"
            else "a frozen copy of the starting weights"
        )
    callbacks.on_log(
        "info",
        f"{task} ({config.method}), beta {config.resolved_beta:g}; reference: {reference}",
    )
    reporter = ReportingCallback(
        callbacks,
        log_every=math.ceil(schedule.total_steps / LOG_LINES_PER_RUN),
        perplexity=False,  # exp of a preference loss means nothing
        sampler=SystemSampler(
            parameters=model.num_parameters(), cuda_index=device.cuda_index, devices=world.size
        ),
    )
    arguments = training_kwargs(
        config, device, schedule, has_eval=bool(eval_records), precision=precision, world=world
    )
    trainer = build_trainer(
        config,
        model=model,
        tokenizer=tokenizer,
        train_records=train_records,
        eval_records=eval_records,
        arguments=arguments,
        callbacks=[reporter, *_lifecycle_callbacks(config, callbacks)],
    )
    trainer.remove_callback(PrinterCallback)
    if config.method != "full":
        trainable, total = trainer.model.get_nb_trainable_parameters()
        callbacks.on_log(
            "info",
            f"{config.method}: {trainable:,} of {total:,} parameters train (r={config.lora_r})",
        )
    if trainer.args.world_size > 1:
        reporter.stop_vote = StopVote()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    step = trainer.state.global_step

    final_dir, adapter_dir = save_trained_model(
        trainer,
        config,
        source,
        "causal_lm",
        world,
        stopped=reporter.stopped,
        step=step,
        callbacks=callbacks,
    )
    metrics = {
        **reporter.latest_train,
        **reporter.latest_eval,
        "train_runtime": float(output.metrics.get("train_runtime", 0.0)),
    }
    return TrainResult(
        final_dir=final_dir,
        global_step=step,
        metrics=metrics,
        stopped=reporter.stopped,
        task=task,
        adapter_dir=adapter_dir,
    )
