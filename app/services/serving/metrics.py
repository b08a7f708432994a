"""Prometheus series of the OpenAI facade, labelled by deployment (the `model` name served).

They live in the web process's default registry, which `/metrics` exposes. With several web
processes (`llmide serve --workers N`, two by default) each process counts its own requests, and
a scrape reaches one of them: so the supervisor runs them in prometheus-client's multiprocess
mode (`PROMETHEUS_MULTIPROC_DIR`, see `use_multiprocess_dir`), and `/metrics` then adds up
every web process's files. The dir must be set before a process imports prometheus_client.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from app.core.errors import DomainError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "llmide_deployment_requests",
    "OpenAI-facade generation requests per deployment, by HTTP status.",
    ["deployment", "status"],
)
LATENCY = Histogram(
    "llmide_deployment_request_seconds",
    "Whole-request latency per deployment (for streams: until the last token).",
    ["deployment"],
    buckets=BUCKETS,
)
TTFT = Histogram(
    "llmide_deployment_time_to_first_token_seconds",
    "Time to the first generated text per deployment (whole answers: the answer's time).",
    ["deployment"],
    buckets=BUCKETS,
)
TOKENS = Counter(
    "llmide_deployment_completion_tokens",
    "Completion tokens generated per deployment; rate() of it is tokens/s.",
    ["deployment"],
)


def use_multiprocess_dir(data_dir: Path) -> Path:
    """Make an empty multiprocess dir and name it in this process's environment, for the web
    processes about to start (spawned: they import prometheus_client afresh and inherit it).

    Emptied at every start: series of a previous run's processes would otherwise be summed in.
    """
    folder = data_dir / "prometheus-web"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def exposition() -> bytes:
    """The text `/metrics` answers: every web process's series when they share a dir."""
    return generate_latest(_registry())


def label_for(target: Any) -> str:
    """The `deployment` label: the deployment's id, or the loaded version's key (`mv-N`) for a
    version loaded on demand. Never a name: /metrics is readable by any signed-in user, and
    serving names carry workspace slugs and model names of other teams."""
    return str(target.deployment_id) if target.deployment_id is not None else str(target.key)


class RequestTimer:
    """Times one facade request; call first_token(), then done(status, tokens)."""

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.started = time.perf_counter()
        self._first: float | None = None
        self._done = False

    def first_token(self) -> None:
        if self._first is None:
            self._first = time.perf_counter() - self.started
            TTFT.labels(self.deployment).observe(self._first)

    def done(self, status: int, tokens: int = 0) -> None:
        if self._done:
            return
        self._done = True
        REQUESTS.labels(self.deployment, str(status)).inc()
        LATENCY.labels(self.deployment).observe(time.perf_counter() - self.started)
        if tokens:
            TOKENS.labels(self.deployment).inc(tokens)


@contextmanager
def rejections(target: Any) -> Iterator[None]:
    """Count a request the web side refuses before it reaches the inference server (a 4xx of
    validation or limits) under its deployment, so the dashboard shows rejected requests too."""
    try:
        yield
    except DomainError as exc:
        REQUESTS.labels(label_for(target), str(exc.status_code)).inc()
        raise


def _registry() -> CollectorRegistry:
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def request_counts() -> dict[str, dict[str, int]]:
    """Requests per `deployment` label as the web side counted them, every web process added up:
    {"requests", "rejected" (4xx: validation, limits), "errors" (5xx), "cancelled" (499)}.

    The dashboard shows these rather than the inference server's own totals, which never see
    what the web refuses, nor the requests of a server that restarted since.
    """
    counts: dict[str, dict[str, int]] = {}
    for metric in _registry().collect():
        if metric.name != "llmide_deployment_requests":
            continue
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            label = sample.labels["deployment"]
            status = int(sample.labels["status"])
            value = int(sample.value)
            entry = counts.setdefault(
                label, {"requests": 0, "rejected": 0, "errors": 0, "cancelled": 0}
            )
            entry["requests"] += value
            if status == 499:
                entry["cancelled"] += value
            elif status >= 500:
                entry["errors"] += value
            elif status >= 400:
                entry["rejected"] += value
    return counts
