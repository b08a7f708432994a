"""DPO overhead of the product against a bare TRL DPOTrainer on the same model, data and settings.

(a) the product: a real `llmide serve --web-only` and a real Celery worker on the embedded
    default (bench/train_overhead.product); the preference pairs are uploaded and the DPO run
    launched through the REST API, so it goes through the queue, the worker's fresh process,
    `workers.engine.train` → `workers/engine/preference.py` (TRL's DPOTrainer with our atomic
    checkpoints, ReportingCallback and the real RunReporter writing every metric); (b) bare
    TRL in this process: `trl.DPOTrainer` with the same scratch model (same config, a tokenizer
    trained on the same pairs), the same frozen reference, batch, sequence length, beta,
    optimizer and schedule, no evaluation, no checkpoints, no callbacks of ours.

Throughput is tokens per second (non-padding tokens of chosen and rejected sequences, as the
Trainer counts them) over the steady-state steps: the first WARMUP steps and the last one
(where the product writes its checkpoint) are left out. The product's steps are timed by the
moments its metric points were stamped (each point is stamped when its step ends), with the
worker's running token count; the bare side's by a callback at each step end. The two run
alternately ROUNDS times (bench/train_overhead.ROUNDS) and the best round of each is compared
(a shared CPU is noisy).

    python bench/preference.py [--steps 30] [--batch 8] [--block 128] [--model scratch-tiny]

Target: ratio >= 0.95. Last line: dpo_overhead_ratio=<product tokens/s ÷ bare TRL tokens/s>.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench.train_overhead import (  # noqa: E402
    alternate_rounds,
    launched_run_points,
    scratch_tokenizer_and_config,
)

WARMUP = 5
TARGET = 0.95
BETA = 0.1
LEARNING_RATE = 5e-4


def pairs(path: Path, rows: int = 1200) -> Path:
    rng = random.Random(0)
    words = ["sea", "cat", "moon", "bread", "river", "winter", "music", "tree", "lamp", "snow"]
    with path.open("w") as handle:
        for i in range(rows):
            topic = " ".join(rng.choices(words, k=rng.randint(2, 12)))
            handle.write(
                json.dumps(
                    {
                        "prompt": [{"role": "user", "content": f"Tell me about {topic} ({i})."}],
                        "chosen": [
                            {"role": "assistant", "content": f"Gladly! About {topic}. " * 2}
                        ],
                        "rejected": [{"role": "assistant", "content": f"No. Not {topic}."}],
                    }
                )
                + "\n"
            )
    return path


def steady_rate(points: dict[int, tuple[float, float]], steps: int) -> float:
    """Tokens/s between the first step after warm-up and the last before the final one, from
    (time a step ended, tokens seen by then)."""
    logged = sorted(s for s in points if WARMUP <= s <= steps - 1)
    first, last = logged[0], logged[-1]
    (t0, n0), (t1, n1) = points[first], points[last]
    return (n1 - n0) / (t1 - t0)


def run_product(args: argparse.Namespace, client: httpx.Client, worker: Any, dataset: int) -> float:
    stamped = launched_run_points(
        client,
        worker,
        dataset=dataset,
        model=args.model,
        config={
            "task_type": "dpo",
            "method": "full",
            "beta": BETA,
            "learning_rate": LEARNING_RATE,
            "batch_size": args.batch,
            "block_size": args.block,
            "max_steps": args.steps,
            "eval_split": 0.0,
            "save_steps": args.steps,  # one checkpoint, after the timed window
            "seed": 1,
        },
        metric="trained_tokens",
    )
    return steady_rate({step: (at.timestamp(), value) for step, at, value in stamped}, args.steps)


def run_bare(args: argparse.Namespace, train_file: Path) -> tuple[float, int]:
    """trl.DPOTrainer alone on the same model and data; returns (tokens/s, parameters)."""
    import copy

    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback, set_seed
    from trl import DPOConfig, DPOTrainer

    from workers.engine.data import read_rows
    from workers.engine.device import configure_cpu_threads, default_cpu_threads, plan_device
    from workers.engine.preference import _dataset, preference_records

    device = plan_device("auto")
    if device.kind == "cpu":
        configure_cpu_threads(default_cpu_threads())
    set_seed(1)
    rows = read_rows(train_file, "preference")
    tokenizer, config = scratch_tokenizer_and_config(rows, args.model, args.block)
    model = AutoModelForCausalLM.from_config(config)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    points: dict[int, tuple[float, float]] = {}

    class StepEnds(TrainerCallback):
        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            points[state.global_step] = (time.perf_counter(), state.num_input_tokens_seen)

    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=DPOConfig(
            output_dir=str(train_file.parent / "bare"),
            use_cpu=device.kind == "cpu",
            bf16=device.bf16,
            per_device_train_batch_size=args.batch,
            learning_rate=LEARNING_RATE,
            max_steps=args.steps,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            weight_decay=0.01,
            max_grad_norm=1.0,
            beta=BETA,
            max_length=args.block,
            gradient_checkpointing=False,
            logging_steps=1 if device.kind == "cpu" else 10,
            save_strategy="no",
            eval_strategy="no",
            include_num_input_tokens_seen="non_padding",
            report_to=[],
            disable_tqdm=True,
            seed=1,
            data_seed=1,
            dataloader_num_workers=0,
        ),
        train_dataset=_dataset(preference_records(rows, "dpo")),
        processing_class=tokenizer,
        callbacks=[StepEnds()],
    )
    trainer.remove_callback(PrinterCallback)  # no log dict printed to stdout each step
    trainer.train()
    return steady_rate(points, args.steps), model.num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--model", default="scratch-tiny")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="llmide-bench-dpo-"))
    train_file = pairs(root / "pairs.jsonl")
    ours, bare, params = alternate_rounds(
        root,
        train_file,
        ours=(
            "product",
            lambda client, worker, dataset: run_product(args, client, worker, dataset),
        ),
        bare=("bare TRL", lambda: run_bare(args, train_file)),
    )
    ratio = ours / bare
    print(f"model {args.model} ({params:,} parameters), DPO beta {BETA}, full, frozen reference")
    print(f"batch {args.batch} pairs, sequences up to {args.block} tokens, {args.steps} steps")
    print(f"product (API -> Celery worker -> engine + RunReporter): {ours:,.0f} tokens/s")
    print(f"bare trl.DPOTrainer:                                  {bare:,.0f} tokens/s")
    print(f"target >= {TARGET} x bare TRL: {'met' if ratio >= TARGET else 'NOT met'}")
    print(f"dpo_overhead_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
