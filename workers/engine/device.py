"""Where a run trains: one chosen GPU or the CPU, with the precision and threads that suit it.

In production the Celery worker sets CUDA_VISIBLE_DEVICES per task, so a task normally sees a
single GPU and trains on "cuda:0"; an explicit "cuda:N" picks among the GPUs a process sees.
A run with several devices is launched by the worker through torchrun (workers/torchrun_launch.py):
each process then reads its place in the world from torchrun's environment (process_world) and
trains on the GPU of its local rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from transformers import TrainingArguments


@dataclass(frozen=True)
class DevicePlan:
    """The device decision for one run."""

    kind: str  # "cpu" | "cuda"
    cuda_index: int | None = None
    bf16: bool = False

    @property
    def label(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.cuda_index}"


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (torchrun's RANK, LOCAL_RANK, WORLD_SIZE)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_world() -> World:
    """The world torchrun describes in the environment; one process alone without it."""
    return World(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        size=int(os.environ.get("WORLD_SIZE", "1")),
    )


def plan_device(spec: str, world: World | None = None) -> DevicePlan:
    """Resolve "auto" | "cpu" | "cuda" | "cuda:N" against the hardware this process sees.

    In a data-parallel world "auto" and "cuda" mean the GPU of this process's local rank.
    """
    if spec == "cpu":
        return DevicePlan("cpu")
    if not torch.cuda.is_available():
        if spec == "auto":
            return DevicePlan("cpu")
        raise RuntimeError(f"device {spec!r} was requested but this worker sees no CUDA GPU")
    index = int(spec.partition(":")[2] or 0)
    if world is not None and world.size > 1 and spec in ("auto", "cuda"):
        index = world.local_rank
    count = torch.cuda.device_count()
    if index >= count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
        raise RuntimeError(
            f"device cuda:{index} was requested but only {count} GPU(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={visible})"
        )
    torch.cuda.set_device(index)
    # Native bf16 only (Ampere and newer): emulated bf16 is slower than fp32 training.
    return DevicePlan("cuda", index, bf16=torch.cuda.is_bf16_supported(including_emulation=False))


@dataclass
class PinnedTrainingArguments(TrainingArguments):
    """TrainingArguments that train on exactly the planned GPU.

    Stock TrainingArguments always takes cuda:0 and, when it sees several GPUs, wraps the
    model in DataParallel; this subclass moves to `cuda_index` and keeps a single device.
    """

    cuda_index: int | None = field(default=None, metadata={"help": "the one GPU to train on"})

    @cached_property
    def _setup_devices(self) -> torch.device:
        # transformers' own cached_property, computed once for this object (mypy sees a method).
        device: torch.device = TrainingArguments._setup_devices.func(self)  # type: ignore[attr-defined]
        if self.cuda_index is None or device.type != "cuda":
            return device
        device = torch.device("cuda", self.cuda_index)
        torch.cuda.set_device(device)
        self._n_gpu = 1
        return device


def pinned_arguments_class(base: type[TrainingArguments]) -> type[TrainingArguments]:
    """`base` (a TrainingArguments subclass such as TRL's DPOConfig) pinned to one GPU like
    PinnedTrainingArguments."""

    @dataclass
    class Pinned(base):  # type: ignore[valid-type,misc]
        cuda_index: int | None = field(default=None, metadata={"help": "the one GPU to train on"})

        @cached_property
        def _setup_devices(self) -> torch.device:
            return PinnedTrainingArguments._setup_devices.func(self)  # type: ignore[attr-defined,no-any-return]

    name = f"Pinned{base.__name__}"
    existing = globals().get(name)
    if isinstance(existing, type) and issubclass(existing, base):
        return existing
    # Named in this module, so the Trainer can pickle its arguments into a checkpoint.
    Pinned.__name__ = Pinned.__qualname__ = name
    Pinned.__module__ = __name__
    globals()[name] = Pinned
    return Pinned


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup v2 CPU quota.

    os.cpu_count() reports the host's cores inside a container; more torch threads than the
    quota allows makes every matmul wait on throttled siblings.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def default_cpu_threads() -> int:
    """All available CPUs but one (at least one).

    The spare core keeps the process's own reporting thread and its neighbours (web server,
    inference child in the embedded setup) from preempting a torch worker thread: libgomp's
    busy-waiting barriers then stall every step (measured on 2 cores under load: 2 threads
    fell to ~1/10 of the speed of 1 thread). A worker started with OMP_WAIT_POLICY=PASSIVE
    can use every core safely; pass cpu_threads explicitly then.
    """
    return max(1, available_cpus() - 1)


def configure_cpu_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (default: default_cpu_threads()); returns it."""
    count = threads or default_cpu_threads()
    torch.set_num_threads(count)
    return count


def resolve_precision(requested: str, device: DevicePlan) -> str:
    """The precision a run trains in: "fp32" | "bf16" | "fp16", or a ValueError saying why not.

    bf16 runs on the CPU (autocast) and on GPUs with native support; fp16 needs CUDA (its
    loss scaling has no CPU path in the Trainer).
    """
    if requested == "auto":
        return "bf16" if device.bf16 else "fp32"
    if requested == "fp16" and device.kind != "cuda":
        raise ValueError("fp16 training needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if requested == "bf16" and device.kind == "cuda" and not device.bf16:
        raise ValueError("this GPU has no native bf16 support; use fp16 or fp32")
    return requested
