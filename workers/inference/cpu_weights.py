"""Which GGUF weights llama.cpp should run on a CPU: small models in a slow type become q8_0.

Why: a model of a few hundred million parameters is compute-bound on a CPU, not memory-bound,
so what matters is whether llama.cpp has a matrix-matrix kernel for the weight type. On x86,
q8_0, q4_0 and f16 go through its GEMM kernels; the asymmetric legacy types (Q4_1, Q5_1) only
have a row-by-row dot product. Measured on a 2-core x86 with SmolLM2-135M (bench/results.md):
the packaged Q4_1 file prefills about 300 prompt tokens/s and eight batched streams reach 1.6x
one stream; the same weights as q8_0 prefill about 780 tokens/s and reach 2.1x, with the same
single-stream speed.

The copy is faithful but not identical: re-quantising adds an error about a tenth of Q4_1's
own. Teacher-forced on five prompts, the copy's next-token choice agrees with the file's at
about 99% of positions and its mean log-likelihood is within about 1%; but a greedy answer,
which feeds every choice back, parts from the file's after 2 to 16 tokens on 4 of those 5.
So it is opt-in (LLMIDE_LLAMACPP_REQUANTIZE=true): by default a deployment answers exactly as
llama.cpp does on the file the user imported.

A big model is the opposite case (memory-bound: 4-bit reads half the bytes of 8-bit), so only
files whose q8_0 copy stays under MAX_REQUANTIZED_BYTES are re-quantised. The deployment shows
the reason.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

# llama.cpp's general.file_type values (enum llama_ftype) of the types re-quantised here.
SLOW_ON_CPU = {3: "Q4_1", 9: "Q5_1"}
# Bits per weight of each, to estimate the q8_0 copy's size (q8_0: 8.5 bits per weight).
_BITS = {"Q4_1": 5.0, "Q5_1": 6.0}
TARGET = "q8_0"
MAX_REQUANTIZED_BYTES = 1 << 30  # about a 1B-parameter model


def file_type(path: Path) -> int | None:
    """The GGUF's general.file_type (llama_ftype), read with llama.cpp's vocabulary-only load."""
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # no line per tensor
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        return None
    try:
        buffer = ctypes.create_string_buffer(32)
        count = llama_cpp.llama_model_meta_val_str(model, b"general.file_type", buffer, 32)
        if count < 0:
            return None
        return int(buffer.value.decode() or -1)
    except ValueError:
        return None
    finally:
        llama_cpp.llama_model_free(model)


def requantize_reason(path: Path, *, max_bytes: int = MAX_REQUANTIZED_BYTES) -> str | None:
    """Why this file should be served as q8_0 on a CPU, or None to serve it as it is."""
    name = SLOW_ON_CPU.get(file_type(path) or -1)
    if name is None:
        return None
    estimated = path.stat().st_size * 8.5 / _BITS[name]
    if estimated > max_bytes:
        return None
    return (
        f"its {name} weights are served re-quantised to {TARGET} (about "
        f"{estimated / 2**20:.0f} MiB): llama.cpp multiplies {TARGET} with its matrix kernels "
        f"on a CPU and {name} row by row, so prompts and concurrent streams run faster "
        "(LLMIDE_LLAMACPP_REQUANTIZE=false serves the file as it is)"
    )
