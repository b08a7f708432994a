"""What the processes of one data-parallel run must agree on: when to stop.

Each process of a torchrun launch runs train() with its own callbacks; only rank 0 reports.
A stop (cancel, stop-and-keep, a worker's SIGTERM) is seen by one process, but every process
must leave the loop at the same step: one that stopped alone would wait forever in the next
gradient all-reduce, and the checkpoint of that step needs every rank's RNG state.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class StopVote:
    """After every optimizer step each rank says whether it wants to stop; all get the OR.

    The vote runs on its own gloo group with a CPU tensor, so on GPUs it adds no GPU→CPU
    synchronisation (an NCCL all-reduce of a CUDA flag would, every step): a few microseconds
    of local-socket traffic per step.
    """

    def __init__(self) -> None:
        self._group = dist.new_group(backend="gloo")
        self._flag = torch.zeros(1, dtype=torch.int32)

    def __call__(self, wants_to_stop: bool) -> bool:
        self._flag.fill_(1 if wants_to_stop else 0)
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(self._flag.item())
