"""Request and response bodies of the inference server's internal HTTP API."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workers.inference.generation import DEFAULT_MAX_TOKENS, Budget, SamplingParams
from workers.inference.registry import MAX_BATCH_SIZE, MAX_REPLICAS

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_PREDICT_INPUTS = 64


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=4096)
    replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    max_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)
    # "now": a failed load is retried at once (a person deployed); "when_due": only once its
    # back-off delay has passed (the web's reconciler asks every few seconds).
    retry: Literal["now", "when_due"] = "now"


class ModelRead(BaseModel):
    name: str
    path: str
    status: Literal["loading", "ready", "failed"]
    error: str | None
    loaded_at: float | None
    kind: Literal["causal-lm", "classifier", "embedding"] = "causal-lm"
    backend: Literal["transformers", "vllm", "llamacpp"] | None = None  # None until chosen
    backend_reason: str | None = None  # why that engine
    in_flight: int = 0  # requests running or queued on it now
    replicas: int = 1
    max_batch_size: int = 8
    stats: dict[str, Any] = Field(default_factory=dict)


class PredictRequest(BaseModel):
    """Classify one text or a list of texts with a sequence-classification model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    path: str | None = Field(default=None, max_length=4096)
    replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    max_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)
    inputs: str | list[str] = Field(description="a text or up to 64 texts")

    @field_validator("inputs")
    @classmethod
    def _check_inputs(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("give at least one input text")
        if len(texts) > MAX_PREDICT_INPUTS:
            raise ValueError(f"at most {MAX_PREDICT_INPUTS} inputs per request")
        return value

    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


MAX_EMBED_INPUTS = 2048  # OpenAI's limit per request


class EmbedRequest(BaseModel):
    """Embed texts or token-id arrays with the model at `path`, loaded for embeddings."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    path: str | None = Field(default=None, max_length=4096)
    inputs: list[str] | list[list[int]] = Field(min_length=1, max_length=MAX_EMBED_INPUTS)


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    prompt_tokens: int


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class Entity(BaseModel):
    """An entity a token-classification model found: character offsets into the input text
    (end exclusive, Python string indices, so Chinese characters count one each)."""

    label: str
    score: float  # the mean probability of its words' predicted tags
    start: int
    end: int
    text: str  # input[start:end]


class EntityPrediction(BaseModel):
    entities: list[Entity]


class PredictResponse(BaseModel):
    predictions: list[Prediction | EntityPrediction]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = Field(min_length=1, max_length=64)
    content: str | list[dict[str, Any]] | None = None
    # Earlier tool calls and tool results, for templates that render them (render_chat).
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ResponseFormat(BaseModel):
    """A constraint on the output: any JSON object, or documents of a JSON schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    def constraint(self) -> tuple[str, str]:
        if self.type == "json_object":
            return ("json_object", "")
        return ("json_schema", json.dumps(self.json_schema or {}))


class GenerateRequest(BaseModel):
    """One completion request; unknown fields are refused so a misspelt parameter is not ignored."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    path: str | None = Field(default=None, max_length=4096)
    prompt: str | None = None
    prompt_ids: list[int] | None = Field(default=None, max_length=131072)
    messages: list[ChatMessage] | None = None
    tools: list[dict[str, Any]] | None = None
    # None: what fits in the context after the prompt, up to max_tokens_cap. 0 only with
    # prompt_logprobs: the prompt's own log-probabilities are the answer (lm-eval's scoring).
    max_tokens: int | None = Field(default=None, ge=0, le=32768)
    max_tokens_cap: int | None = Field(default=None, ge=1, le=32768)
    # Chats only: drop the oldest turns when the history leaves the answer too little room.
    trim_history: bool = False
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] | None = Field(default=None, max_length=300)
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)
    prompt_logprobs: bool = False
    response_format: ResponseFormat | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="the web facade fans n out")
    # Used only when this request loads the model (on demand, e.g. after a restart).
    replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    max_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        # OpenAI accepts a single string as well as a list.
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        if any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> GenerateRequest:
        given = [self.prompt is not None, self.prompt_ids is not None, self.messages is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of 'prompt', 'prompt_ids' and 'messages'")
        if self.max_tokens == 0 and not self.prompt_logprobs:
            raise ValueError("max_tokens 0 generates nothing; it is for prompt_logprobs only")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")
        return self

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=(
                self.max_tokens
                if self.max_tokens is not None
                else self.max_tokens_cap or DEFAULT_MAX_TOKENS
            ),
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(self.stop or ()),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=tuple(sorted((self.logit_bias or {}).items())),
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            prompt_logprobs=self.prompt_logprobs,
            constraint=self.response_format.constraint() if self.response_format else None,
        )

    def budget(self) -> Budget:
        return Budget(
            explicit=self.max_tokens is not None,
            cap=self.max_tokens_cap,
            trim_history=self.trim_history,
        )

    def message_dicts(self) -> list[dict[str, Any]] | None:
        if self.messages is None:
            return None
        return [m.model_dump() for m in self.messages]


class GenerateResponse(BaseModel):
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # of prompt_tokens, served from the prefix cache (llama.cpp)
    trimmed_messages: int = 0
    logprobs: list[dict[str, Any]] | None = None
    prompt_logprobs: list[dict[str, Any]] | None = None
