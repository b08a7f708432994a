"""System metrics sampled beside the training metrics: CPU, memory, throughput, GPU, MFU.

Sampled at most once per SAMPLE_EVERY_S from the training log hook, never per step, and
without touching a CUDA tensor: NVML and psutil read counters the driver and the kernel keep,
so sampling adds no GPU→CPU synchronisation. Without NVML (a CPU worker, or nvidia-ml-py not
installed) the GPU keys are simply absent.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 1.0
SYSTEM_METRIC_KEYS = (
    "cpu_percent",
    "ram_mb",
    "samples_per_second",
    "gpu_utilization",
    "gpu_memory_mb",
    "mfu",
)
# Dense bf16 tensor-core peaks, by device name fragment (no sparsity); MFU is left out on
# devices not listed here (and on CPUs).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def peak_flops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    return next((f for key, f in PEAK_BF16_FLOPS.items() if key in device_name), None)


class SystemSampler:
    """Reads process and device counters; one instance per run."""

    def __init__(self, *, parameters: int, cuda_index: int | None = None, devices: int = 1) -> None:
        self.parameters = parameters
        self.devices = devices  # a data-parallel run's throughput is that of all its GPUs
        self._last = 0.0
        self._process: Any = None
        try:
            import psutil

            self._process = psutil.Process(os.getpid())
            self._process.cpu_percent(None)  # the first reading starts the interval
        except Exception:
            self._process = None
        self._nvml: Any = None
        self._handle: Any = None
        self._peak: float | None = None
        if cuda_index is not None:
            self._open_nvml(cuda_index)

    def _open_nvml(self, cuda_index: int) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            # CUDA_VISIBLE_DEVICES renumbers GPUs for CUDA; NVML sees them all.
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            ids = [v.strip() for v in visible.split(",") if v.strip()]
            physical = (
                int(ids[cuda_index])
                if cuda_index < len(ids) and ids[cuda_index].isdigit()
                else cuda_index
            )
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(physical)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self._peak = peak_flops(name.decode() if isinstance(name, bytes) else str(name))
            self._nvml = pynvml
        except Exception as exc:  # no NVML library, no driver: GPU metrics are skipped
            log.info("GPU metrics unavailable (%s)", exc)
            self._nvml = None

    def due(self) -> bool:
        return time.monotonic() - self._last >= SAMPLE_EVERY_S

    def sample(self, *, tokens_per_second: float, samples_per_second: float) -> dict[str, float]:
        self._last = time.monotonic()
        out: dict[str, float] = {"samples_per_second": samples_per_second}
        if self._process is not None:
            try:
                out["cpu_percent"] = float(self._process.cpu_percent(None))
                out["ram_mb"] = self._process.memory_info().rss / 2**20
            except Exception:
                pass
        if self._nvml is not None:
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                out["gpu_utilization"] = float(util.gpu)
                out["gpu_memory_mb"] = memory.used / 2**20
            except Exception:
                pass
        if self._peak and tokens_per_second > 0:
            # 6·N FLOPs per token for forward and backward (Kaplan et al.), attention ignored.
            out["mfu"] = 6 * self.parameters * tokens_per_second / (self._peak * self.devices)
        return out
