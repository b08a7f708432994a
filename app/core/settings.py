"""The one place that reads environment variables: every process's configuration."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration for web, worker and inference processes.

    Every URL has an embedded default (SQLite, kombu's SQLAlchemy transport) so that
    `make run` needs no server; production sets the URLs to Postgres and Redis.
    """

    model_config = SettingsConfigDict(env_prefix="LLMIDE_", env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    # Web processes `llmide serve` starts (one uses at most one core). Every piece of shared
    # state lives in the database or Redis (sessions, sign-in throttle, live updates), so
    # several are safe; see docs/trust.md.
    web_workers: int = Field(default=2, ge=1, le=64)
    data_dir: Path = Path("data")
    database_url: str | None = None
    redis_url: str | None = None
    inference_host: str = "127.0.0.1"
    # Unset, `llmide serve` picks the web port + 1 if free, else any free port, and hands it
    # to its children: two installations on one machine never share an inference server.
    inference_port: int = 8001
    inference_url: str | None = None
    # Which installation this process belongs to (default: derived from data_dir). The web
    # talks only to an inference server of the same installation (app/core/instance.py).
    instance_id: str | None = None
    secret_key: str | None = None
    cookie_secure: bool = False
    session_max_age_s: int = 14 * 24 * 3600
    max_upload_bytes: int = 50 * 1024 * 1024
    max_line_bytes: int = 1024 * 1024
    # Datasets (docs/datasets-ingest.md): a chunked upload may be bigger than one request;
    # this also caps a gzip file's decompressed size.
    max_dataset_bytes: int = 2 * 1024 * 1024 * 1024
    # A model imported by chunked upload (a .zip of a Hugging Face folder or a .gguf file):
    # a 7B model in fp16 is ~14 GB.
    max_model_import_bytes: int = 20 * 1024 * 1024 * 1024
    max_dataset_rows: int = 5_000_000
    # One plain-text document (a whole file, or a blank-line-separated block).
    max_document_bytes: int = 16 * 1024 * 1024
    # How many problems a rejected upload lists (all are counted).
    upload_problems_listed: int = 20
    # Chunked uploads untouched this long are deleted with their partial file.
    chunked_upload_max_age_s: int = 24 * 3600
    # Host names the web answers to; anything else is refused (DNS-rebinding defence).
    allowed_hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1", "localhost", "[::1]"])
    metrics_poll_interval_s: float = 0.1
    worker_queues: str = "gpu,cpu"
    # Base models: Hugging Face directories and .gguf files under models_dir are offered for
    # runs (None: none); hub ids only where the server may download (hub_enabled).
    models_dir: Path | None = None
    hub_enabled: bool = False
    # A running run whose worker has been silent this long is resumed by another worker.
    run_stale_after_s: float = Field(60.0, ge=2.0)
    # Automatic restarts of a run whose worker died (kill -9, OOM) before it is marked failed:
    # an out-of-memory crash cannot loop. A person can still resume it by hand.
    run_max_restarts: int = Field(3, ge=0, le=100)
    # Memory of one training device (a GPU's, in GiB) for the launch form's estimate; unset:
    # this machine's RAM (the embedded setup trains on the CPU).
    train_device_memory_gb: float | None = Field(None, gt=0)
    # The launch estimate's calibration (a worker timing a few steps of a shape) runs in a child
    # process capped at this much memory (GiB); unset: half the RAM available when it starts
    # (on a GPU worker: half the GPU's free memory). A shape the estimate says needs more is
    # not run at all.
    calibration_memory_gb: float | None = Field(None, gt=0)
    calibration_timeout_s: float = Field(300.0, gt=0)
    # A task message delivered this many times without finishing (its worker died each time:
    # out of memory, a crash) is given up: its run or job fails with the reason.
    task_max_deliveries: int = Field(3, ge=1, le=100)
    # GPUs a worker hands out, one per pool process ("0,1,2,3" with `-c 4`); empty: no pinning.
    worker_gpus: str = ""
    # Runs training at once across the fleet (docs/queue.md): set it to the number of GPU worker
    # slots; the embedded worker has one. The rest wait in the queue.
    max_concurrent_runs: int = Field(1, ge=1, le=10_000)
    # How often each worker advances sweeps (pruning, next trials) and re-dispatches.
    queue_tick_s: float = Field(5.0, ge=0.5, le=3600)
    # `migrate` and `serve` wait this long for the database (a compose start, a restarting
    # server), then exit with one clear message rather than crash-looping.
    db_connect_attempts: int = Field(30, ge=1)
    db_connect_delay_s: float = Field(1.0, ge=0.0)
    # Registry: a folder on the server whose model directories / GGUF files may be imported by
    # path (nothing outside it, symlinks resolved); None turns imports by path off.
    import_dir: Path | None = None
    # Model uploads (zip of a HF folder, or a GGUF file) may be far larger than datasets.
    max_model_upload_bytes: int = 8 * 1024**3
    # Promoting to production needs a finished evaluation passing this gate, e.g.
    # "perplexity<=40" or "accuracy>=0.9"; None: no evaluation is required.
    production_gate: str | None = None
    # Serving (docs/serving.md): after a redeploy switches, the old version keeps its weights
    # this long so requests already routed to it finish; the web re-checks live deployments
    # against the inference server this often (0 turns the reconciler off).
    deployment_drain_s: float = Field(5.0, ge=0.0)
    deployment_reconcile_interval_s: float = Field(10.0, ge=0.0)
    # The engine behind generation deployments (workers/inference/backends.py): "auto" takes
    # vLLM where it imports, a CUDA GPU is present and it supports the model, else llama.cpp
    # for GGUF causal LMs, else the built-in transformers lanes; "vllm" / "llamacpp" insist
    # (a load fails with the reason otherwise).
    inference_backend: Literal["auto", "transformers", "vllm", "llamacpp"] = "auto"
    # llama.cpp engine: CPU threads per deployment (0: every core the process may use) and the
    # KV-cache size in tokens one deployment shares among its concurrent requests; a request's
    # context is at most this (and the model's training context).
    llamacpp_threads: int = Field(0, ge=0, le=256)
    llamacpp_kv_tokens: int = Field(8192, ge=256, le=1_048_576)
    # A safetensors causal LM (GPT-2 / Llama family) that llama.cpp would serve is exported to a
    # q8_0 GGUF once (kept under <data dir>/gguf-cache) when it loads; false keeps such
    # versions on the transformers lanes.
    llamacpp_export: bool = True
    # true: a small GGUF in a type llama.cpp multiplies row by row on a CPU (Q4_1, Q5_1) is
    # served re-quantised to q8_0, kept under <data dir>/gguf-cache: faster prompts and
    # concurrent streams, answers that may differ from the file's after a few tokens
    # (workers/inference/cpu_weights.py, docs/serving.md). Off: a file is served as imported.
    llamacpp_requantize: bool = False
    # Share of GPU memory one vLLM engine may take; below vLLM's 0.9 because a redeploy loads
    # the new version beside the old one, so two engines must fit.
    vllm_gpu_memory_utilization: float = Field(0.45, gt=0.0, le=1.0)

    # Artifacts for the whole fleet (docs/fleet.md): unset, the folder under data_dir (one
    # machine, or a shared disk); `s3://bucket/prefix`, S3-compatible object storage that
    # every worker and inference server reads and writes, each keeping only a local copy.
    artifact_url: str | None = None
    # Endpoint of a self-hosted S3 server (MinIO: http://minio:9000); unset: AWS. Credentials
    # unset: boto3's own chain (AWS_* variables, instance roles).
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    # Files above the threshold go up and down in parts of this size (S3 allows 10,000
    # parts: 16 MiB parts cover 160 GB) with this many transfers at once.
    artifact_multipart_threshold_mb: int = Field(64, ge=5, le=5 * 1024)
    artifact_multipart_chunk_mb: int = Field(16, ge=5, le=5 * 1024)
    artifact_transfer_threads: int = Field(4, ge=1, le=64)
    # With object storage, what an inference server (or worker) keeps of the model versions
    # it pulled: least recently used versions go first beyond this size.
    artifact_cache_gb: float = Field(20.0, gt=0)

    # Multi-node runs (docs/fleet.md): the address other nodes reach this worker at for the
    # rendezvous it hosts (unset: its host name), and how long a run's nodes may take to all
    # start before none of them trains and the run goes back to the queue.
    node_address: str | None = None
    gang_timeout_s: float = Field(300.0, ge=5.0, le=24 * 3600)

    @field_validator("artifact_url")
    @classmethod
    def _s3_artifact_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        from urllib.parse import urlparse

        parsed = urlparse(value)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(
                "LLMIDE_ARTIFACT_URL must be s3://bucket[/prefix] (unset: the local folder)"
            )
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def artifact_root(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Accept the plain postgres URLs people paste; we talk psycopg 3.
            if url.startswith("postgres://"):
                url = "postgresql://" + url[len("postgres://") :]
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            return url
        return f"sqlite:///{self.data_dir / 'llmide.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def broker_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        return f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def inference_base_url(self) -> str:
        return self.inference_url or f"http://{self.inference_host}:{self.inference_port}"

    def ensure_dirs(self) -> None:
        """The data and artifact folders, private to this user (app/core/file_modes.py); every
        process calls this before it writes, so it also sets the process's private umask."""
        from app.core import file_modes

        file_modes.keep_new_files_private()
        file_modes.private_dir(self.data_dir)
        file_modes.private_dir(self.artifact_root)
        file_modes.private_database_files(self.data_dir)

    def resolved_secret_key(self) -> str:
        """The signing key: from the environment, else generated once and kept in data_dir.

        There is no default secret: a fresh install makes its own random one.
        """
        if self.secret_key:
            if len(self.secret_key) < 32:
                raise ValueError("LLMIDE_SECRET_KEY must be at least 32 characters long")
            return self.secret_key
        self.ensure_dirs()
        path = self.data_dir / "secret_key"
        if not path.exists():
            # Several web workers may start at once: each writes its own temporary file and
            # links it into place; a link never replaces an existing file, so the first one
            # wins and every process reads the same key.
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(secrets.token_urlsafe(48))
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        return path.read_text().strip()

    @property
    def internal_token(self) -> str:
        """Shared secret between web and inference processes (derived, never configured)."""
        import hashlib

        # The installation is part of it: a web process never drives another installation's
        # inference server, even where both were given the same LLMIDE_SECRET_KEY.
        seed = f"inference:{self.resolved_instance_id}:{self.resolved_secret_key()}"
        return hashlib.sha256(seed.encode()).hexdigest()

    @property
    def resolved_instance_id(self) -> str:
        """This installation's id: the setting, else a digest of its data folder's path."""
        import hashlib

        if self.instance_id:
            return self.instance_id
        return hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]

    @property
    def inference_port_configured(self) -> bool:
        """Whether where the inference server listens was set (else `serve` chooses)."""
        return bool({"inference_port", "inference_url"} & self.model_fields_set)


@lru_cache
def get_settings() -> Settings:
    return Settings()
