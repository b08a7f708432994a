"""Times a few training steps of a model shape on this worker's device: the launch estimate's
expected duration comes from this measurement, not from a guess."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from workers.engine.device import configure_cpu_threads, plan_device
from workers.engine.scratch import DEFAULT_VOCAB_SIZE, scratch_config

WARMUP_STEPS = 2


def measure_throughput(
    base_model: str, *, batch_size: int, block_size: int, device: str = "auto", steps: int = 4
) -> tuple[float, str]:
    """(training tokens per second, device label) for random tokens at this shape.

    Forward, backward and an AdamW step, like training; random data because the speed of a
    step does not depend on the tokens.
    """
    plan = plan_device(device)
    if plan.kind == "cpu":
        configure_cpu_threads()
        target = torch.device("cpu")
        label = "cpu"
    else:
        target = torch.device("cuda", plan.cuda_index or 0)
        label = torch.cuda.get_device_name(target)
    config = scratch_config(
        base_model, vocab_size=DEFAULT_VOCAB_SIZE, block_size=block_size, bos_token_id=0,
        eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).to(target)
    model.loss_type = "ForCausalLM"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, DEFAULT_VOCAB_SIZE, (batch_size, block_size), generator=generator)
    batch = batch.to(target)
    started = 0.0
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            if plan.kind == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(target.type, dtype=torch.bfloat16, enabled=plan.bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if plan.kind == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return steps * batch_size * block_size / elapsed, label


# --- the calibration runs in a child process under a memory cap ----------------------------
# A worker once timed a shape needing ~93 GiB on a 23 GiB machine: it grew until the kernel
# killed it, and the redelivered task did it again. The task now refuses shapes that do not fit
# (workers/tasks.py) and runs the ones that do in a child whose memory is capped, so an
# estimate that is wrong ends in a clean "out of memory" instead of the machine's OOM killer.

EXIT_OUT_OF_MEMORY = 3
EXIT_FAILED = 4


@dataclass(frozen=True)
class Calibration:
    """A child's answer: a rate, or why there is none."""

    tokens_per_second: float | None = None
    device: str | None = None
    error: str | None = None


def _vm_bytes(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def _cap_memory(limit_bytes: int, device: str) -> None:
    """Cap what this process may allocate from now on: on a CPU, its data segment (heap and
    anonymous mappings, where tensors live: RLIMIT_DATA, which unlike RLIMIT_AS leaves shared
    libraries out) at what it holds now plus `limit_bytes`; on a GPU, its share of the GPU's
    memory (CUDA reserves huge address ranges, so an address-space limit cannot apply there)."""
    plan = plan_device(device)
    if plan.kind == "cuda":
        total = torch.cuda.get_device_properties(plan.cuda_index or 0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_bytes / total), plan.cuda_index)
        return
    cap = _vm_bytes("VmData") + limit_bytes
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)  # a cap put on the whole worker stays the tighter one
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))


def run_capped(
    base_model: str,
    *,
    batch_size: int,
    block_size: int,
    memory_limit_bytes: int,
    timeout_s: float,
    device: str = "auto",
) -> Calibration:
    """measure_throughput in a child process that may allocate at most `memory_limit_bytes`;
    a child that runs out of it, fails, is killed or overruns `timeout_s` is an error, never a
    crash of the caller."""
    argv = [
        sys.executable, "-m", "workers.engine.calibrate", base_model, str(batch_size),
        str(block_size), str(memory_limit_bytes), device,
    ]  # fmt: skip
    # Few malloc arenas: each thread's arena reserves address space the cap would count.
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return Calibration(error=f"timing this shape took longer than {timeout_s:.0f} s")
    last = done.stdout.strip().splitlines()[-1:] or [""]
    try:
        answer = json.loads(last[0])
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        return Calibration(
            tokens_per_second=answer.get("tokens_per_second"),
            device=answer.get("device"),
            error=answer.get("error"),
        )
    how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
    return Calibration(error=f"the timing process ended without an answer ({how})")


def _child(base_model: str, batch_size: int, block_size: int, limit: int, device: str) -> int:
    _cap_memory(limit, device)
    try:
        rate, label = measure_throughput(
            base_model, batch_size=batch_size, block_size=block_size, device=device
        )
    except (MemoryError, torch.OutOfMemoryError) as exc:
        print(json.dumps({"error": _out_of_memory(limit, exc)}), flush=True)
        return EXIT_OUT_OF_MEMORY
    except RuntimeError as exc:
        if "alloc" in str(exc).lower() or "out of memory" in str(exc).lower():
            print(json.dumps({"error": _out_of_memory(limit, exc)}), flush=True)
            return EXIT_OUT_OF_MEMORY
        print(json.dumps({"error": f"timing failed: {str(exc)[:300]}"}), flush=True)
        return EXIT_FAILED
    print(json.dumps({"tokens_per_second": rate, "device": label}), flush=True)
    return 0


def _out_of_memory(limit: int, exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return (
        f"this shape ran out of the {limit / 2**30:.1f} GiB a calibration may use "
        f"({first_line}); no duration is estimated for it"
    )


if __name__ == "__main__":
    model, batch, block, limit_bytes, device_spec = sys.argv[1:6]
    sys.exit(_child(model, int(batch), int(block), int(limit_bytes), device_spec))
