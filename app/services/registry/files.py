"""Which files make a model folder, and streaming one out as a zip without building it in memory."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from zipstream import ZIP_STORED, ZipStream

# A Hugging Face folder as from_pretrained reads it; everything else in a training checkpoint
# (optimizer.pt, rng_state.pth, training_args.bin: pickles) stays behind.
CONFIG_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "tokenizer.model",
        "chat_template.jinja",
        "chat_template.json",
        "adapter_config.json",
        "README.md",
        "Modelfile",  # Ollama's recipe beside an exported GGUF
    }
)
WEIGHT_RE = re.compile(
    r"^[A-Za-z0-9._-]+\.(safetensors|gguf|onnx|onnx\.data)$|.*\.safetensors\.index\.json$"
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def is_model_file(name: str) -> bool:
    return name in CONFIG_FILES or bool(WEIGHT_RE.match(name))


def is_pickle(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that travel with it (weights, config, tokenizer, template)."""
    if folder.is_file():
        return [folder]
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and is_model_file(p.name)),
        key=lambda p: p.name,
    )


def is_adapter(folder: Path) -> bool:
    return folder.is_dir() and (folder / "adapter_config.json").is_file()


def zip_stream(folder: Path, top: str) -> tuple[Iterator[bytes], int]:
    """A zip of the folder's model files under `top/`, as chunks, and its exact size.

    Stored, not deflated (weights do not compress), so the size is known before the first byte
    and the archive is produced file by file while it is sent: memory stays flat for any size.
    """
    stream = ZipStream(compress_type=ZIP_STORED, sized=True)
    for path in model_files(folder):
        stream.add_path(str(path), f"{top}/{path.name}")
    return iter(stream), len(stream)
