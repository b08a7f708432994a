"""Prometheus metrics of one inference server, on a registry of its own (not the global one)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Generation on a CPU takes seconds; the default buckets stop at 10 s.
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class InferenceMetrics:
    """Counters and histograms the server updates; a private registry keeps tests independent."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmide_inference_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "llmide_inference_errors",
            "Requests that ended in an error (4xx/5xx, or an error event inside a stream).",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "llmide_inference_request_latency_seconds",
            "Time to the response's first byte, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.generation_seconds = Histogram(
            "llmide_inference_generation_seconds",
            "Wall time of a whole generation, by model and streaming or not.",
            ["model", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "llmide_inference_prompt_tokens",
            "Prompt tokens processed, by model.",
            ["model"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "llmide_inference_tokens_generated",
            "Completion tokens generated, by model.",
            ["model"],
            registry=self.registry,
        )
        self.prompt_tokens_cached = Counter(
            "llmide_inference_prompt_tokens_cached",
            "Prompt tokens taken from the engine's prefix cache instead of prefilled, by model.",
            ["model"],
            registry=self.registry,
        )
        self.steps_to_first_token = Histogram(
            "llmide_inference_steps_to_first_token",
            "Decode steps from a request's submission to its first token (llama.cpp engine): "
            "2 means it joined at the next step (the one running when it arrived, then its own).",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "llmide_inference_batch_size",
            "Requests decoded together in one batch.",
            buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.model_requests = Counter(
            "llmide_inference_model_requests",
            "Generation and predict requests per deployment, by outcome (ok, error, cancelled).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.model_latency = Histogram(
            "llmide_inference_model_latency_seconds",
            "Whole-request latency per deployment.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "llmide_inference_time_to_first_token_seconds",
            "Time from a request's arrival to its first generated text, per deployment.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cancelled = Counter(
            "llmide_inference_cancelled",
            "Generations stopped early because their client went away, per deployment.",
            ["model"],
            registry=self.registry,
        )
        self.models = Gauge(
            "llmide_inference_models",
            "Deployments held by this process, by status.",
            ["status"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
