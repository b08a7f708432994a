"""Dataset ingest throughput: validate + clean + tokenize a generated JSONL through the product's
pipeline (`workers.dataprep`, the code the `llmide.prepare_dataset` task runs), against Hugging
Face `datasets` (`load_dataset("json")` + `map(batched=True)`) with the same fast tokenizer, in
the same run on the same file.

Each side runs in its own child process so that its peak RSS is its own. The target: at least
1.0x the baseline's MB/s with the product's peak RSS under 1 GB.

    python bench/dataset_ingest.py            # ~200 MB
    python bench/dataset_ingest.py --mb 20    # a quick run

Last lines: `ingest_peak_rss_mb=...` then `ingest_vs_hf_datasets=...`.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORDS = tuple(
    [
        "the",
        "model",
        "learns",
        "from",
        "data",
        "and",
        "each",
        "token",
        "counts",
        "in",
        "the",
        "loss",
        "while",
        "prompts",
        "are",
        "masked",
        "training",
        "runs",
        "on",
        "a",
        "small",
        "machine",
        "with",
        "two",
        "cores",
        "and",
        "a",
        "database",
        "that",
        "records",
        "every",
        "metric",
    ]
)
HANZI = "我们今天在公园里散步天气很好机器学习是人工智能的一个分支研究计算机如何从数据中学习规律"
MAX_LENGTH = 2048
STEPS = [
    {"step": "strip_html"},
    {"step": "nfkc"},
    {"step": "whitespace"},
    {"step": "exact_dedup"},
    {"step": "length_filter", "unit": "chars", "min": 1},
]


def generate(path: Path, megabytes: float, seed: int = 0) -> int:
    """Rows of ~1 KB mixing English and Chinese, some markup, extra spaces and duplicates."""
    rng = random.Random(seed)
    target = int(megabytes * 1024 * 1024)
    written = 0
    previous: list[bytes] = []
    with path.open("wb") as handle:
        while written < target:
            if previous and rng.random() < 0.02:
                line = rng.choice(previous)
            else:
                parts = []
                for _ in range(rng.randint(6, 14)):
                    if rng.random() < 0.3:
                        parts.append("".join(rng.choices(HANZI, k=rng.randint(10, 40))) + "。")
                    else:
                        parts.append(" ".join(rng.choices(WORDS, k=rng.randint(8, 20))) + ".")
                text = "  ".join(parts)
                if rng.random() < 0.2:
                    text = f"<p>{text}</p>"
                line = (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode()
                if len(previous) < 200:
                    previous.append(line)
            handle.write(line)
            written += len(line)
    return written


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_product(source: Path, workdir: Path) -> dict[str, float]:
    from app.core.prep_recipe import Recipe, TokenizeSettings
    from workers.dataprep.run import prepare_file
    from workers.dataprep.tokenize import BackgroundSink, TokenSink
    from workers.dataprep.tokenizers import load_packaged

    load_packaged("smollm2")  # loading the model's tokenizer is not ingest work
    baseline_rss = _peak_rss_mb()
    recipe = Recipe.model_validate({"steps": STEPS})
    settings = TokenizeSettings(tokenizer="smollm2", max_length=MAX_LENGTH, packing=True)
    started = time.perf_counter()
    # What the prepare task does with a packaged tokenizer: clean, write and tokenize the
    # output rows in one pass over the data.
    sink = BackgroundSink(
        TokenSink(
            tokenizer=load_packaged("smollm2"),
            schema="text",
            settings=settings,
            cache_root=workdir / "tokenized",
        )
    )
    prepared = prepare_file(source=source, schema="text", recipe=recipe, workdir=workdir, sink=sink)
    info = sink.finish(prepared.sha256)
    ended = time.perf_counter()
    return {
        "seconds": ended - started,
        "rows_out": prepared.num_rows,
        "tokens": info.num_tokens,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_mb": baseline_rss,
    }


def phase_hf(source: Path, workdir: Path) -> dict[str, float]:
    import datasets

    from workers.dataprep.tokenizers import load_packaged

    datasets.disable_progress_bars()
    tokenizer = load_packaged("smollm2")
    started = time.perf_counter()
    dataset = datasets.load_dataset(
        "json", data_files=str(source), split="train", cache_dir=str(workdir / "hf")
    )
    tokenized = dataset.map(
        lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"]
    )
    tokens = sum(len(ids) for ids in tokenized.data.column("input_ids").to_pylist()[:1])
    ended = time.perf_counter()
    return {
        "seconds": ended - started,
        "rows_out": len(tokenized),
        "tokens_first_row": tokens,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _child(phase: str, source: Path, workdir: Path) -> dict[str, float]:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--phase",
            phase,
            "--file",
            str(source),
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{phase} phase failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=200.0, help="size of the generated JSONL")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds, alternating which side goes first; each side's best round counts "
        "(a shared machine's noise only ever slows a round down)",
    )
    parser.add_argument("--phase", choices=["product", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        run = phase_product if args.phase == "product" else phase_hf
        print(json.dumps(run(args.file, args.workdir)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        source = work / "data.jsonl"
        size = generate(source, args.mb)
        mb = size / 1024 / 1024
        print(f"generated {mb:.1f} MB of JSONL", flush=True)
        results: dict[str, list[dict[str, float]]] = {"product": [], "hf": []}
        for round_no in range(max(args.repeat, 1)):
            order = ("product", "hf") if round_no % 2 == 0 else ("hf", "product")
            for phase in order:
                folder = work / f"{phase}-{round_no}"
                folder.mkdir()
                results[phase].append(_child(phase, source, folder))
                shutil.rmtree(folder, ignore_errors=True)
        product = min(results["product"], key=lambda r: r["seconds"])
        hf = min(results["hf"], key=lambda r: r["seconds"])
        # Peak memory is the worst round's, not the fastest one's.
        product["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results["product"])
        hf["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results["hf"])
    product_mbs = mb / product["seconds"]
    hf_mbs = mb / hf["seconds"]
    print(
        f"product (validate + clean + tokenize, smollm2 tokenizer): {product['seconds']:.1f} s "
        f"= {product_mbs:.2f} MB/s, {product['rows_out']} rows, {product['tokens']} tokens, "
        f"peak RSS {product['peak_rss_mb']:.0f} MB"
    )
    print(
        f"baseline (datasets load_dataset json + map(batched=True)): {hf['seconds']:.1f} s "
        f"= {hf_mbs:.2f} MB/s, {hf['rows_out']} rows, peak RSS {hf['peak_rss_mb']:.0f} MB"
    )
    print(f"ingest_mb_per_s={product_mbs:.2f}")
    print(f"hf_datasets_mb_per_s={hf_mbs:.2f}")
    print(f"ingest_peak_rss_mb={product['peak_rss_mb']:.0f}")
    print(f"ingest_vs_hf_datasets={product_mbs / hf_mbs:.2f}")


if __name__ == "__main__":
    main()
