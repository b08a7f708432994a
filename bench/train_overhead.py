"""Training overhead of the product's engine, run by a real worker, against a bare PyTorch loop.

(a) the product: a real `llmide serve --web-only` and a real Celery worker (`llmide worker
    --queues gpu`) on the embedded default (SQLite database and broker, no Redis needed); the
    corpus is uploaded and the run launched through the REST API, so the run goes through the
    queue, the worker's fresh process, `workers.engine.train` (HF Trainer, our callbacks,
    atomic checkpointing) and the real `RunReporter` writing every metric, progress and log
    line to the database; (b) a bare loop in this process: the same GPT-2-style model built
    from the same config, the same blocks, batch, sequence length and AdamW settings,
    forward/backward/clip/step, no logging.

Throughput is tokens per second over the steady-state steps (the first WARMUP steps and the
last one, where the engine writes its checkpoint, are left out). The worker's step ends are the
times its metric points were reported (the reporter stamps each point when its step ends, not
when its batch reaches the database), so every callback and reporter cost counts; process
start, tokenizer training and the final save do not. The two run alternately ROUNDS times and
the best round of each is compared (a shared CPU is noisy).

    python bench/train_overhead.py [--steps 40] [--batch 8] [--block 128] [--model scratch-tiny]
                                   [--device auto]

Target: ratio >= 0.95. Last line: train_overhead_ratio=<engine tokens/s ÷ bare tokens/s>.
On a GPU it also prints the MFU of each (6·params·tokens/s ÷ the device's peak bf16 FLOPs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench._support import free_port, seed_bench_run, stop_process, web_server  # noqa: E402

WARMUP = 5
ROUNDS = 2
TARGET = 0.95
TERMINAL = {"succeeded", "failed", "cancelled"}
# Dense bf16 tensor-core peaks (no sparsity), by device name fragment.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def corpus(path: Path, rows: int = 3000) -> Path:
    rng = random.Random(0)
    words = ["the", "a", "cat", "dog", "bird", "sees", "likes", "finds", "red", "big", "tree"]
    lines = [json.dumps({"text": " ".join(rng.choices(words, k=24)) + "."}) for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


STATUS_POLL_S = 0.5
RUN_TIMEOUT_S = 900


def steady_rate(ends: dict[int, float], tokens_per_step: int, steps: int) -> float:
    """Tokens/s between the first logged step after warm-up and the last before the final one."""
    logged = sorted(s for s in ends if WARMUP <= s <= steps - 1)
    first, last = logged[0], logged[-1]
    return (last - first) * tokens_per_step / (ends[last] - ends[first])


@contextmanager
def product(
    data_dir: Path, **extra_env: str
) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    """The web server and a training worker on one fresh installation; an API client for it.

    `extra_env`: more LLMIDE_* settings for both (the models folder, say)."""
    env = {"LLMIDE_DATA_DIR": str(data_dir), "LLMIDE_PORT": str(free_port()), **extra_env}
    for key in [k for k in os.environ if k.startswith("LLMIDE_")]:
        del os.environ[key]
    os.environ.update(env)
    secret, _ = seed_bench_run(status="succeeded")  # migrates; a user and an API token
    log = (data_dir.parent / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--queues", "gpu"],
        env={**os.environ, **env},
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with (
            web_server(env) as _,
            httpx.Client(
                base_url=f"http://127.0.0.1:{env['LLMIDE_PORT']}",
                headers={"Authorization": f"Bearer {secret}"},
                timeout=60,
            ) as client,
        ):
            yield client, worker
    finally:
        stop_process(worker, timeout_s=30)
        log.close()


def launched_run_points(
    client: httpx.Client,
    worker: subprocess.Popen[bytes],
    *,
    dataset: int,
    model: str,
    config: dict[str, Any],
    metric: str,
) -> list[tuple[int, datetime, float]]:
    """Launch a run through the API, wait for the worker to finish it, and read its `metric`
    points back from the database as (step, moment stamped, value): the stamps time the steps
    (shared by bench/preference.py)."""
    from sqlalchemy import select

    from app.db.models import MetricPoint
    from app.db.session import reset_engine_cache, session_scope

    reply = client.post(
        "/api/v1/runs", json={"dataset_id": dataset, "base_model": model, "config": config}
    )
    reply.raise_for_status()
    run_id = reply.json()["id"]
    wait_until_succeeded(client, run_id, worker)
    reset_engine_cache()
    with session_scope() as session:
        rows = session.execute(
            select(MetricPoint.step, MetricPoint.created_at, MetricPoint.value).where(
                MetricPoint.run_id == run_id, MetricPoint.name == metric
            )
        ).all()
    return [(step, at, value) for step, at, value in rows]


def run_engine(
    args: argparse.Namespace, client: httpx.Client, worker: subprocess.Popen[bytes], dataset: int
) -> float:
    """Launch through the API, wait for the worker to finish it, time it by its metric points."""
    stamped = launched_run_points(
        client,
        worker,
        dataset=dataset,
        model=args.model,
        config={
            "batch_size": args.batch,
            "block_size": args.block,
            "max_steps": args.steps,
            "eval_split": 0.0,
            "save_steps": args.steps,  # one checkpoint, after the timed window
            "seed": 1,
        },
        metric="train_loss",
    )
    ends = {step: at.timestamp() for step, at, _value in stamped}
    return steady_rate(ends, args.batch * args.block, args.steps)


def wait_until_succeeded(
    client: httpx.Client, run_id: int, worker: subprocess.Popen[bytes]
) -> dict:
    """Poll the run through the API until it ends; a failed run or a dead worker stops the
    bench with the reason (shared by bench/gpu_train.py)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (run := client.get(f"/api/v1/runs/{run_id}").json())["status"] not in TERMINAL:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not finish (worker exit {worker.poll()})")
        time.sleep(STATUS_POLL_S)
    if run["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} {run['status']}: {run.get('error')}")
    return run


def scratch_tokenizer_and_config(rows: list[Any], model: str, block: int) -> tuple[Any, Any]:
    """The tokenizer the engine trains on `rows` (4096 entries) and the config of the scratch
    `model` sized to it: what a bare baseline builds to match a run from scratch (shared by
    bench/preference.py)."""
    from workers.engine.data import tokenizer_corpus
    from workers.engine.scratch import scratch_config
    from workers.engine.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(tokenizer_corpus(rows), vocab_size=4096, model_max_length=block)
    config = scratch_config(
        model,
        vocab_size=len(tokenizer),
        block_size=block,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer, config


def run_bare(args: argparse.Namespace, train_file: Path) -> tuple[float, int]:
    """The same model, data and optimizer in a plain loop; returns (tokens/s, parameters)."""
    import torch
    from transformers import AutoModelForCausalLM

    from workers.engine.data import build_blocks, read_rows, render_rows
    from workers.engine.device import configure_cpu_threads, plan_device

    device = plan_device(args.device)
    if device.kind == "cpu":
        configure_cpu_threads()
    torch.manual_seed(1)
    rows = read_rows(train_file, "text")
    tokenizer, config = scratch_tokenizer_and_config(rows, args.model, args.block)
    blocks = build_blocks(render_rows(rows, tokenizer), tokenizer, args.block)
    target = torch.device("cuda", device.cuda_index or 0) if device.kind == "cuda" else "cpu"
    model = AutoModelForCausalLM.from_config(config).to(target)
    model.loss_type = "ForCausalLM"  # as the engine sets it
    model.train()
    # What the Trainer builds from our TrainingArguments: AdamW, weight decay 0.01 except
    # biases and norms, cosine schedule with 5% warm-up, gradients clipped at 1.0.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=5e-4,
        fused=device.kind == "cuda",
    )
    warm = max(1, math.ceil(0.05 * args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            s / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, args.steps - warm)))
        ),
    )
    generator = torch.Generator().manual_seed(1)
    order = torch.randperm(len(blocks), generator=generator)
    ends: dict[int, float] = {}
    for step in range(1, args.steps + 1):
        start = ((step - 1) * args.batch) % max(1, len(blocks) - args.batch)
        index = order[start : start + args.batch]
        input_ids = blocks.input_ids[index].to(target, non_blocking=True)
        mask = blocks.attention_mask[index].to(target, non_blocking=True)
        labels = input_ids.masked_fill(mask == 0, -100)
        with torch.autocast(
            target.type if device.kind == "cuda" else "cpu",
            dtype=torch.bfloat16,
            enabled=device.bf16,
        ):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if device.kind == "cuda":
            torch.cuda.synchronize()  # a step ends when the GPU is done, as in the engine's log
        ends[step] = time.perf_counter()
    return steady_rate(ends, args.batch * args.block, args.steps), model.num_parameters()


def alternate_rounds(
    root: Path,
    train_file: Path,
    *,
    ours: tuple[str, Callable[[httpx.Client, subprocess.Popen[bytes], int], float]],
    bare: tuple[str, Callable[[], tuple[float, int]]],
) -> tuple[float, float, int]:
    """Upload `train_file` to a fresh product under `root`/data, then run the product's side
    and the bare side alternately ROUNDS times, printing each round; the best rate of each
    (a shared machine is noisy) and the bare model's parameter count (shared by
    bench/preference.py)."""
    (ours_label, run_ours), (bare_label, run_bare_side) = ours, bare
    ours_rates, bare_rates = [], []
    params = 0
    with product(root / "data") as (client, worker):
        with train_file.open("rb") as stream:
            uploaded = client.post("/api/v1/datasets", files={"file": (train_file.name, stream)})
        uploaded.raise_for_status()
        for round_ in range(ROUNDS):
            ours_rates.append(run_ours(client, worker, uploaded.json()["id"]))
            rate, params = run_bare_side()
            bare_rates.append(rate)
            print(
                f"round {round_ + 1}: {ours_label} {ours_rates[-1]:,.0f} tokens/s, "
                f"{bare_label} {bare_rates[-1]:,.0f} tokens/s",
                flush=True,
            )
    return max(ours_rates), max(bare_rates), params


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--model", default="scratch-tiny")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="llmide-bench-train-"))
    train_file = corpus(root / "corpus.jsonl")
    engine, bare, params = alternate_rounds(
        root,
        train_file,
        ours=("engine", lambda client, worker, dataset: run_engine(args, client, worker, dataset)),
        bare=("bare loop", lambda: run_bare(args, train_file)),
    )
    ratio = engine / bare
    print(f"model {args.model} ({params:,} parameters), batch {args.batch} x {args.block} tokens")
    print(f"engine (API -> Celery worker -> engine + RunReporter): {engine:,.0f} tokens/s")
    print(f"bare PyTorch loop:                                     {bare:,.0f} tokens/s")
    if (peak := peak_flops()) is not None:
        for label, rate in (("engine", engine), ("bare", bare)):
            print(f"MFU {label}: {6 * params * rate / peak:.1%} of {peak / 1e12:.0f} TFLOPS bf16")
    print(f"target >= {TARGET} x the bare loop: {'met' if ratio >= TARGET else 'NOT met'}")
    print(f"train_overhead_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
