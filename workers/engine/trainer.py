"""train(): one run from dataset files to checkpoints and a final model, on the HF Trainer."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging as hf_logging

from workers.engine.callbacks import TrainCallbacks
from workers.engine.classify import (
    ClassificationCollator,
    ClassificationEvaluator,
    LabeledDataset,
    label_names,
)
from workers.engine.config import PREFERENCE_TASKS, TrainConfig
from workers.engine.data import (
    BlockDataset,
    EntityText,
    LabeledText,
    Pair,
    Row,
    build_blocks,
    read_rows,
    read_split_rows,
    render_rows,
    rows_by_split,
    tokenizer_corpus,
)
from workers.engine.device import (
    DevicePlan,
    PinnedTrainingArguments,
    World,
    configure_cpu_threads,
    default_cpu_threads,
    plan_device,
    process_world,
    resolve_precision,
)
from workers.engine.distributed import StopVote
from workers.engine.files import make_readable, publish_dir
from workers.engine.lifecycle import EarlyStoppingOnMetric
from workers.engine.loss_mask import Message, pair_conversation
from workers.engine.metrics import generation_scores, scalar_metrics
from workers.engine.models import (
    Source,
    apply_lora,
    load_pretrained_model,
    load_pretrained_tokenizer,
    merged_model,
    pretrained_source,
)
from workers.engine.reporting import ReportingCallback
from workers.engine.scratch import scratch_config
from workers.engine.sft import ExampleDataset, PadCollator, build_sft_dataset
from workers.engine.system_metrics import SystemSampler
from workers.engine.token_classify import (
    EntityDataset,
    TokenCollator,
    TokenEvaluator,
    tag_names,
)
from workers.engine.tokenizer import (
    fast_tokenizer,
    generation_eos_ids,
    load_tokenizer,
    train_tokenizer,
)

TRAINER_STATE_FILE = "trainer_state.json"  # what makes a directory a resumable checkpoint
# Where a checkpoint is written before it is renamed into place; the Trainer's checkpoint-*
# globbing (rotation, resume) never sees it.
STAGING_DIR = ".staging"
EVALUATIONS_PER_RUN = 10
CHECKPOINTS_PER_RUN = 4
LOG_LINES_PER_RUN = 20  # "step N/M loss X" lines in the log tail; every step goes to on_metrics
ADAPTER_DIR = "adapter"  # a LoRA run's adapter, beside the merged final model
# What a supervised task trains and evaluates on (preference tasks hand TRL plain records).
TaskDataset = BlockDataset | LabeledDataset | EntityDataset | ExampleDataset


@dataclass(frozen=True)
class TrainResult:
    final_dir: Path  # loads with AutoModelForCausalLM / AutoTokenizer.from_pretrained
    global_step: int
    metrics: dict[str, float]  # the latest training and evaluation values, plus train_runtime
    stopped: bool  # True when should_stop() ended the run early
    task: str = "causal_lm"
    # The final evaluation in full: a classification report (per class, confusion matrix) or
    # seq2seq generation scores; {} when there was no eval set.
    report: dict[str, Any] = field(default_factory=dict)
    adapter_dir: Path | None = None  # LoRA runs: the adapter alone (final_dir is merged)


class CheckpointSaveFailed(RuntimeError):
    """Writing a checkpoint failed (a full disk, say); the checkpoints before it are intact."""


class AtomicCheckpointTrainer(Trainer):
    """A Trainer whose checkpoints appear whole or not at all.

    The stock Trainer writes checkpoint-N in place, so a save that fails half way (a full disk,
    a killed worker) leaves a folder that looks like a checkpoint but does not load. Here each
    checkpoint is written into a staging folder and renamed into place once every file of it
    is on disk; a failed save leaves nothing behind but the error.
    """

    _staging_root: Path | None = None
    _pending_tokens: Any = 0  # tokens counted on the device since the last read-back

    def _track_num_input_tokens(self, inputs: Any) -> None:
        # The stock count gathers and calls .item() every step: a GPU→CPU sync (and, with
        # several ranks, a collective) per step even between logs. Here the count stays on
        # the device and is summed and read back only when the Trainer is about to log,
        # evaluate or save.
        if (
            self.args.include_num_input_tokens_seen != "non_padding"
            or "attention_mask" not in inputs
        ):
            # The Trainer's method is untyped; mypy's untyped_calls_exclude does not cover a call
            # through super(), which names no class for it to match.
            super()._track_num_input_tokens(inputs)  # type: ignore[no-untyped-call]
            return
        self._pending_tokens = self._pending_tokens + inputs["attention_mask"].sum()

    def _flush_token_count(self) -> None:
        pending = self._pending_tokens
        self._pending_tokens = 0
        if self.args.world_size > 1:
            # Every rank flushes at the same steps (logging, evaluation and saving follow the
            # step count, a stop is all-reduced), so this sum is a collective all ranks join.
            local = torch.as_tensor(pending, dtype=torch.int64, device=self.args.device)
            pending = self.accelerator.reduce(local, reduction="sum")
        if isinstance(pending, torch.Tensor):
            self.state.num_input_tokens_seen += int(pending.item())

    def _maybe_log_save_evaluate(self, *args: Any, **kwargs: Any) -> None:
        control = self.control
        if (
            control.should_log
            or control.should_save
            or control.should_evaluate
            or control.should_training_stop
        ):
            self._flush_token_count()
        super()._maybe_log_save_evaluate(*args, **kwargs)

    def _get_output_dir(self, trial: Any) -> str:
        # During a save the stock _save_checkpoint writes (and rotates) under the staging root.
        if self._staging_root is not None:
            return str(self._staging_root)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # With several ranks each writes its own files (rank 0 the weights, optimizer and
        # state; every rank its RNG state): barriers make rank 0 publish the folder only once
        # all of them are on disk, and no rank start writing before the old staging is gone.
        main = self.is_world_process_zero()
        barrier = self.accelerator.wait_for_everyone
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = run_dir / STAGING_DIR
        if main:
            shutil.rmtree(staging_root, ignore_errors=True)  # what an interrupted save left
        barrier()
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
            barrier()
            if main:
                publish_dir(staging_root / name, run_dir / name)
        except Exception as exc:
            raise CheckpointSaveFailed(
                f"could not write the checkpoint at step {self.state.global_step}: {exc}"
            ) from exc
        finally:
            self._staging_root = None
            if main:
                shutil.rmtree(staging_root, ignore_errors=True)
        barrier()  # the published folder is there before any rank reports or rotates
        best = self.state.best_model_checkpoint
        if best is not None and Path(best).parent == staging_root:
            self.state.best_model_checkpoint = str(run_dir / Path(best).name)
        if not main:
            return
        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )


@dataclass(frozen=True)
class Schedule:
    total_steps: int
    eval_steps: int
    save_steps: int


def plan_schedule(config: TrainConfig, train_blocks: int, world_size: int = 1) -> Schedule:
    """Total optimizer steps and the eval/save cadence, fixed before training starts.

    Fixing max_steps here (the Trainer would derive the same from epochs) lets progress,
    defaults and a resumed run all agree on one number. Each step of a data-parallel run
    takes world_size batches (one per rank).
    """
    steps_per_epoch = math.ceil(
        train_blocks / (config.batch_size * config.gradient_accumulation_steps * world_size)
    )
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    return Schedule(
        total_steps=total,
        eval_steps=config.eval_steps or max(1, math.ceil(total / EVALUATIONS_PER_RUN)),
        save_steps=config.save_steps or max(1, math.ceil(total / CHECKPOINTS_PER_RUN)),
    )


def train(config: TrainConfig, callbacks: TrainCallbacks) -> TrainResult:
    """Run one training job to completion (or to a requested stop); raise on failure.

    Everything the run writes lands under config.output_dir. Exceptions propagate after an
    "error" log line, so the caller can mark the run failed.
    """
    config.validate()
    # "Writing model shards" bars at every checkpoint would only clutter a worker's log.
    hf_logging.disable_progress_bar()
    try:
        if config.resolved_task in PREFERENCE_TASKS:
            from workers.engine.preference import train_preference

            return train_preference(config, callbacks)
        return _train(config, callbacks)
    except Exception as exc:
        callbacks.on_log("error", f"training failed: {exc}")
        raise


@dataclass
class Prepared:
    """The task's data, tokenizer and model inputs, built before the model."""

    task: str
    tokenizer: PreTrainedTokenizerBase
    train_set: Any  # BlockDataset | ExampleDataset | LabeledDataset
    eval_set: Any | None
    collator: Any
    source: Source | None  # None: a scratch model
    labels: list[str] | None = None
    eval_rows: list[Row] = field(default_factory=list)


def _train(config: TrainConfig, callbacks: TrainCallbacks) -> TrainResult:
    world = process_world()
    device = plan_device(config.device, world)
    precision = resolve_precision(config.precision, device)
    if device.kind == "cpu":
        # Several processes on one CPU share its cores rather than each taking all of them.
        threads = configure_cpu_threads(
            config.cpu_threads or max(1, default_cpu_threads() // world.size)
        )
        callbacks.on_log("info", f"training on cpu with {threads} threads ({precision})")
    else:
        callbacks.on_log("info", f"training on {device.label} ({precision})")
    if world.size > 1:
        callbacks.on_log(
            "info",
            f"data parallel on {world.size} processes ({_ddp_backend(device)}): global batch "
            f"{world.size} × {config.batch_size} × {config.gradient_accumulation_steps} = "
            f"{world.size * config.batch_size * config.gradient_accumulation_steps}",
        )
    checkpoint = _checkpoint_to_resume(config)
    set_seed(config.seed)
    prepared = _prepare_data(config, checkpoint, callbacks)
    schedule = plan_schedule(config, len(prepared.train_set), world.size)

    model = _build_model(config, prepared, checkpoint)
    callbacks.on_log(
        "info",
        f"model {config.base_model} for {prepared.task}: {model.num_parameters():,} parameters",
    )
    if config.method != "full":
        model = apply_lora(model, config, prepared.task)
        trainable, total = model.get_nb_trainable_parameters()
        callbacks.on_log(
            "info",
            f"{config.method}: {trainable:,} of {total:,} parameters train (r={config.lora_r})",
        )
    evaluator: ClassificationEvaluator | TokenEvaluator | None = None
    if prepared.task == "classification":
        evaluator = ClassificationEvaluator(prepared.labels or [])
    elif prepared.task == "token_classification":
        evaluator = TokenEvaluator(prepared.labels or [])
    reporter = ReportingCallback(
        callbacks,
        log_every=math.ceil(schedule.total_steps / LOG_LINES_PER_RUN),
        sampler=SystemSampler(
            parameters=model.num_parameters(), cuda_index=device.cuda_index, devices=world.size
        ),
    )
    trainer_class: type[AtomicCheckpointTrainer] = AtomicCheckpointTrainer
    teacher = None
    if config.teacher_path is not None:
        from workers.engine.distill import DistillingTrainer, load_teacher

        teacher = load_teacher(config, prepared.tokenizer)
        trainer_class = DistillingTrainer
        callbacks.on_log(
            "info",
            f"distilling from a {teacher.num_parameters():,}-parameter teacher "
            f"(temperature {config.distill_temperature:g}, weight {config.distill_weight:g})",
        )
    trainer = trainer_class(
        model=model,
        args=_training_arguments(
            config,
            device,
            schedule,
            has_eval=prepared.eval_set is not None,
            precision=precision,
            predictions=evaluator is not None,
            world=world,
        ),
        data_collator=prepared.collator,
        train_dataset=prepared.train_set,
        eval_dataset=prepared.eval_set,
        # Saved into every checkpoint, so each one loads with AutoTokenizer on its own.
        processing_class=prepared.tokenizer,
        compute_metrics=evaluator,
        callbacks=[reporter, *_lifecycle_callbacks(config, callbacks)],
    )
    if teacher is not None:
        trainer.teacher = teacher  # type: ignore[attr-defined]
        trainer.temperature = config.distill_temperature  # type: ignore[attr-defined]
        trainer.weight = config.distill_weight  # type: ignore[attr-defined]
    # With tqdm off the Trainer prints every log dict to stdout; the reporter already has them.
    trainer.remove_callback(PrinterCallback)
    if trainer.args.world_size > 1:  # the process group exists once the arguments set it up
        reporter.stop_vote = StopVote()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    step = trainer.state.global_step

    report: dict[str, Any] = {}
    if evaluator is not None and prepared.eval_set is not None:
        evaluated = [e["step"] for e in trainer.state.log_history if "eval_loss" in e]
        if not evaluated or evaluated[-1] != step:
            trainer.evaluate()  # the report describes the final weights
        report = evaluator.latest
    elif prepared.task == "seq2seq" and prepared.eval_rows and world.is_main:
        report = _generation_eval(config, trainer.model, prepared, callbacks)
        callbacks.on_metrics(step, {f"eval_{k}": v for k, v in report.items()})

    final_dir, adapter_dir = save_trained_model(
        trainer,
        config,
        prepared.source,
        prepared.task,
        world,
        stopped=reporter.stopped,
        step=step,
        callbacks=callbacks,
    )
    metrics = {
        **reporter.latest_train,
        **reporter.latest_eval,
        **{f"eval_{k}": v for k, v in scalar_metrics(report).items()},
        "train_runtime": float(output.metrics.get("train_runtime", 0.0)),
    }
    return TrainResult(
        final_dir=final_dir,
        global_step=step,
        metrics=metrics,
        stopped=reporter.stopped,
        task=prepared.task,
        report=report,
        adapter_dir=adapter_dir,
    )


def _generation_eval(
    config: TrainConfig, model: Any, prepared: Prepared, callbacks: TrainCallbacks
) -> dict[str, float]:
    """Greedy answers to the first eval sources, scored against their targets (BLEU, ROUGE).

    Run once at the end: generating is far slower than an eval loss, so the periodic
    evaluations report loss only.
    """
    import torch

    tokenizer = prepared.tokenizer
    pairs = [row for row in prepared.eval_rows if isinstance(row, Pair)]
    pairs = pairs[: config.generation_eval_rows]
    model.eval()
    device = next(model.parameters()).device
    predictions: list[str] = []
    for pair in pairs:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": pair.source}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids[:, -config.block_size // 2 :].to(device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=min(64, config.block_size // 2),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert isinstance(answer, str)  # one sequence decodes to one text
        predictions.append(answer.strip())
    scores = generation_scores(predictions, [pair.target for pair in pairs])
    callbacks.on_log(
        "info",
        f"generation eval on {len(pairs)} rows: BLEU {scores['bleu']:.2f} "
        f"ROUGE-L {scores['rougeL']:.3f}",
    )
    return scores


def _lifecycle_callbacks(config: TrainConfig, callbacks: TrainCallbacks) -> list[Any]:
    """Callbacks that may end a run on their own (early stopping)."""
    if config.early_stopping_patience is None:
        return []
    return [
        EarlyStoppingOnMetric(
            callbacks,
            metric=config.early_stopping_metric,
            patience=config.early_stopping_patience,
            mode=config.early_stopping_mode,
        )
    ]


def _checkpoint_to_resume(config: TrainConfig) -> Path | None:
    if config.resume_from is None:
        return None
    if not (config.resume_from / TRAINER_STATE_FILE).is_file():
        raise ValueError(f"cannot resume: {config.resume_from} is not a training checkpoint")
    return config.resume_from


def _prepare_data(
    config: TrainConfig, checkpoint: Path | None, callbacks: TrainCallbacks
) -> Prepared:
    """Read the files, get the tokenizer (the base's, trained, or the checkpoint's) and build
    the task's datasets."""
    task = config.resolved_task
    callbacks.on_log("info", "loading data")
    train_rows, eval_rows = _load_rows(config)
    callbacks.on_log(
        "info", f"data loaded: {len(train_rows)} training and {len(eval_rows)} eval documents"
    )
    source, tokenizer = tokenizer_for(config, checkpoint, train_rows, callbacks)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    labels: list[str] | None = None
    train_set: TaskDataset
    eval_set: TaskDataset | None
    if task == "causal_lm":
        train_set, eval_set = _build_datasets(config, tokenizer, train_rows, eval_rows)
        collator: Any = default_data_collator  # equal-length blocks: stacking is all they need
        unit = f"blocks of {config.block_size}"
    elif task == "classification":
        labelled = [r for r in train_rows if isinstance(r, LabeledText)]
        held = [r for r in eval_rows if isinstance(r, LabeledText)]
        labels = label_names(labelled, held)
        if len(labels) < 2:
            raise ValueError(f"classification needs at least 2 labels (found {labels})")
        train_set = LabeledDataset(labelled, tokenizer, labels, config.block_size)
        eval_set = LabeledDataset(held, tokenizer, labels, config.block_size) if held else None
        collator = ClassificationCollator(pad_id)
        unit = f"texts, {len(labels)} labels"
    elif task == "token_classification":
        entity_rows = [r for r in train_rows if isinstance(r, EntityText)]
        held_entities = [r for r in eval_rows if isinstance(r, EntityText)]
        labels = tag_names(entity_rows, held_entities)
        if len(labels) < 2:
            raise ValueError("token classification needs at least one entity in the data")
        train_set = EntityDataset(
            entity_rows, tokenizer, labels, config.block_size, config.label_alignment
        )
        # Evaluated on each word's first sub-word whatever the alignment (token_classify).
        eval_set = (
            EntityDataset(held_entities, tokenizer, labels, config.block_size, "first")
            if held_entities
            else None
        )
        collator = TokenCollator(pad_id)
        unit = (
            f"texts, {(len(labels) - 1) // 2} entity types, labels on "
            f"{config.label_alignment} sub-words"
        )
    else:  # sft, seq2seq: conversations masked to the answers
        train_set = build_sft_dataset(_conversations(train_rows), tokenizer, config.block_size)
        eval_set = None
        if eval_rows:
            eval_set = build_sft_dataset(_conversations(eval_rows), tokenizer, config.block_size)
        collator = PadCollator(pad_id)
        unit = "conversations (loss on the answers)"
    if len(train_set) == 0:
        raise ValueError("the training data is too small: no example left after tokenization")
    if eval_set is not None and len(eval_set) == 0:
        eval_set = None
    callbacks.on_log(
        "info",
        f"{train_set.num_tokens} training tokens in {len(train_set)} {unit}"
        + (f", {eval_set.num_tokens} eval tokens" if eval_set is not None else ", no eval set"),
    )
    return Prepared(
        task=task,
        tokenizer=tokenizer,
        train_set=train_set,
        eval_set=eval_set,
        collator=collator,
        source=source,
        labels=labels,
        eval_rows=eval_rows,
    )


def tokenizer_for(
    config: TrainConfig, checkpoint: Path | None, train_rows: list[Row], callbacks: TrainCallbacks
) -> tuple[Source | None, PreTrainedTokenizerBase]:
    """The pretrained base's source and tokenizer; a scratch run's tokenizer comes from its
    checkpoint when it resumes, else it is trained on the run's data."""
    source = None if config.is_scratch else pretrained_source(config)
    if source is None and checkpoint is None and config.teacher_path is not None:
        # Logit distillation needs one vocabulary: a scratch student reads with its teacher's.
        from workers.engine.distill import teacher_tokenizer

        tokenizer = teacher_tokenizer(config)
        callbacks.on_log("info", f"tokenizer of the teacher: vocab {len(tokenizer)}")
        return source, tokenizer
    if source is not None:
        tokenizer = load_pretrained_tokenizer(source, config.block_size)
        callbacks.on_log("info", f"tokenizer of {config.base_model}: vocab {len(tokenizer)}")
    elif checkpoint is not None:
        tokenizer = load_tokenizer(checkpoint)
        callbacks.on_log("info", f"tokenizer loaded from {checkpoint.name}: vocab {len(tokenizer)}")
    else:
        tokenizer = train_tokenizer(
            tokenizer_corpus(train_rows),
            vocab_size=config.vocab_size,
            model_max_length=config.block_size,
        )
        callbacks.on_log("info", f"tokenizer trained: vocab {len(tokenizer)}")
    return source, tokenizer


def _conversations(rows: list[Row]) -> list[list[Message]]:
    """SFT and seq2seq rows as conversations; a seq2seq pair is one user turn and its answer."""
    conversations: list[list[Message]] = []
    for row in rows:
        if isinstance(row, Pair):
            conversations.append(pair_conversation(row.source, row.target))
        elif isinstance(row, list):
            conversations.append(row)
    return conversations


def _load_rows(config: TrainConfig) -> tuple[list[Row], list[Row]]:
    """Training and eval documents: a prepared version's own train/validation split (its test
    rows are never trained on), else a seeded share held out of the training file."""
    marked = read_split_rows(config.train_file, config.train_format)
    if config.validation_file is not None:
        validation_format = config.validation_format or config.train_format
        train = [row for split, row in marked if split in (None, "train")]
        return train, read_rows(config.validation_file, validation_format)
    return rows_by_split(marked, config.eval_split, config.seed)


def _build_datasets(
    config: TrainConfig,
    tokenizer: PreTrainedTokenizerBase,
    train_rows: list[Row],
    eval_rows: list[Row],
) -> tuple[BlockDataset, BlockDataset | None]:
    fast = fast_tokenizer(tokenizer)  # blocks are encoded by its Rust backend in batches
    train_set = build_blocks(render_rows(train_rows, fast), fast, config.block_size)
    eval_set = None
    if eval_rows:
        eval_set = build_blocks(render_rows(eval_rows, fast), fast, config.block_size)
    elif config.validation_file is None and config.eval_split > 0:
        # Too few documents to hold one out (e.g. a .txt without blank lines): split blocks.
        train_set, eval_set = train_set.split(config.eval_split, config.seed)
    if len(train_set) == 0:
        raise ValueError(
            f"the training data is too small: {train_set.num_tokens} tokens after tokenization"
        )
    if eval_set is not None and len(eval_set) == 0:
        eval_set = None
    return train_set, eval_set


def _build_model(
    config: TrainConfig, prepared: Prepared, checkpoint: Path | None
) -> PreTrainedModel:
    task, tokenizer = prepared.task, prepared.tokenizer
    if prepared.source is not None:
        # The base's weights; on resume the Trainer then loads the checkpoint's over them.
        return load_pretrained_model(config, prepared.source, task, tokenizer, prepared.labels)
    if checkpoint is not None and (checkpoint / "config.json").is_file():
        # Same architecture as the checkpoint; Trainer loads its weights when it resumes.
        # (A LoRA checkpoint holds only its adapter: its base is rebuilt below from the same
        # seed, hence the same initial weights, and the adapter is loaded over it.)
        model_config = AutoConfig.from_pretrained(checkpoint)
    else:
        model_config = scratch_config(
            config.base_model,
            vocab_size=len(tokenizer),
            block_size=config.block_size,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    if task in ("classification", "token_classification"):
        labels = prepared.labels or []
        model_config.num_labels = len(labels)
        model_config.id2label = dict(enumerate(labels))
        model_config.label2id = {label: i for i, label in enumerate(labels)}
        classifier: PreTrainedModel
        if task == "token_classification":
            classifier = AutoModelForTokenClassification.from_config(model_config)
        else:
            classifier = AutoModelForSequenceClassification.from_config(model_config)
        return classifier
    model: PreTrainedModel = AutoModelForCausalLM.from_config(model_config)
    # GPT-2's class name ("LMHeadModel") hides its loss type from transformers 5, which then
    # warns on every run before falling back to this very loss.
    model.loss_type = "ForCausalLM"
    # Saved with every checkpoint: inference then stops at <|end|> and knows the pad id.
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = generation_eos_ids(tokenizer)
    generation.pad_token_id = tokenizer.pad_token_id
    return model


def _training_arguments(
    config: TrainConfig,
    device: DevicePlan,
    schedule: Schedule,
    *,
    has_eval: bool,
    precision: str = "fp32",
    predictions: bool = False,
    world: World | None = None,
) -> PinnedTrainingArguments:
    return PinnedTrainingArguments(
        **training_kwargs(
            config,
            device,
            schedule,
            has_eval=has_eval,
            precision=precision,
            predictions=predictions,
            world=world,
        )
    )


def training_kwargs(
    config: TrainConfig,
    device: DevicePlan,
    schedule: Schedule,
    *,
    has_eval: bool,
    precision: str = "fp32",
    predictions: bool = False,
    world: World | None = None,
) -> dict[str, Any]:
    """The Trainer arguments of a run: shared by the supervised trainer and TRL's preference
    trainers (whose configs are TrainingArguments with more fields)."""
    on_gpu = device.kind == "cuda"
    distributed = world is not None and world.size > 1
    warmup: float = config.warmup_steps if config.warmup_steps is not None else config.warmup_ratio
    return dict(
        output_dir=str(config.output_dir / "checkpoints"),
        cuda_index=device.cuda_index,
        use_cpu=not on_gpu,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=config.seed,
        data_seed=config.seed,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        max_steps=schedule.total_steps,
        # Defaults follow the GPT-style recipe: short linear warmup, cosine decay, clipping.
        # "constant" still warms up (the Trainer's constant_with_warmup).
        lr_scheduler_type=(
            "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
        ),
        # transformers 5: a float below 1 is a ratio of the total steps, an int a step count.
        warmup_steps=warmup,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_strategy="steps",
        # Only logging steps read the loss and grad norm back from the device.
        logging_steps=config.logging_interval(on_gpu),
        # The stock NaN/inf filter tests every step's loss on the host: a sync per step.
        # A diverged run shows NaN in its logged loss instead of a smoothed-over value.
        logging_nan_inf_filter=False,
        ddp_backend=_ddp_backend(device) if distributed else None,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=schedule.eval_steps if has_eval else None,
        # Language-model logits of a whole eval set would be kept in memory; only the loss is
        # used. A classifier's logits are small and make its metrics.
        prediction_loss_only=not predictions,
        save_strategy="steps",
        save_steps=schedule.save_steps,
        save_total_limit=config.keep_checkpoints,
        include_num_input_tokens_seen="non_padding",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        remove_unused_columns=False,
    )


def _ddp_backend(device: DevicePlan) -> str:
    return "nccl" if device.kind == "cuda" else "gloo"


def save_trained_model(
    trainer: Trainer,
    config: TrainConfig,
    source: Any,
    task: str,
    world: World,
    *,
    stopped: bool,
    step: int,
    callbacks: TrainCallbacks,
) -> tuple[Path, Path | None]:
    """The end of every training method: a LoRA run keeps its adapter beside the merged
    weights; the final folder is written whole; the log says how the run ended.
    Returns (final_dir, adapter_dir or None)."""
    adapter_dir = None
    if config.method != "full":
        adapter_dir = config.output_dir / ADAPTER_DIR
        # A peft PeftModel (apply_lora, or TRL's peft_config), which the Trainer's own
        # annotation (a PreTrainedModel or a torch Module) does not describe.
        adapter_model: Any = trainer.model
        if world.is_main:
            adapter_model.save_pretrained(str(adapter_dir))
            make_readable(adapter_dir)
        trainer.model = merged_model(adapter_model, config, source, task)
    final_dir = _save_final(trainer, config.final_dir, world)
    if stopped:
        callbacks.on_log("info", f"stopped at step {step}; model saved to {final_dir.name}")
    else:
        callbacks.on_log("info", f"training finished at step {step}; model saved")
    return final_dir, adapter_dir


def _save_final(trainer: Trainer, final_dir: Path, world: World | None = None) -> Path:
    """Weights (safetensors), config, generation config and tokenizer in one loadable folder.

    Written beside its final name and renamed into place, like the checkpoints; by rank 0
    alone in a data-parallel run (the others wait until it is in place).
    """
    if world is not None and world.size > 1:
        if world.is_main:
            _save_final(trainer, final_dir)
        trainer.accelerator.wait_for_everyone()
        return final_dir
    staged = final_dir.with_name(f"{STAGING_DIR}-{final_dir.name}")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        trainer.save_model(str(staged))
        # A pickled TrainingArguments is of no use to inference and no pickle ships with a model.
        (staged / "training_args.bin").unlink(missing_ok=True)
        make_readable(staged)
        publish_dir(staged, final_dir)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return final_dir
