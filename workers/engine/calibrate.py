"""Times a few training steps of a model shape on this worker's device: the launch estimate's
expected duration comes from this measurement, not from a guess."""

from __future__ import annotations

import time

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
