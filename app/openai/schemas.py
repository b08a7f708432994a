"""Request and response shapes of the OpenAI facade, one group per resource, OpenAI's names."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from app.core.errors import ValidationFailed

Auto = Literal["auto"]


# --- files --------------------------------------------------------------------------------
class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    # Uploads are validated before they are stored, so a file that exists is processed.
    status: Literal["uploaded", "processed", "error"] = "processed"


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    # OpenAI's schema types these as strings (never null): an empty page gives "".
    first_id: str
    last_id: str
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# --- fine-tuning jobs ---------------------------------------------------------------------
# name: (smallest, largest, whole numbers only); OpenAI's ranges (a multiplier must be > 0).
_HYPERPARAMETER_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "batch_size": (1, 256, True),
    "n_epochs": (1, 50, True),
    "learning_rate_multiplier": (0, None, False),
    "beta": (0, 2, False),  # DPO's beta: above 0, at most 2
}


class HyperparametersIn(BaseModel):
    """OpenAI's ranges; "auto" keeps this server's default."""

    model_config = ConfigDict(extra="forbid")

    batch_size: Auto | int = "auto"
    learning_rate_multiplier: Auto | float = "auto"
    n_epochs: Auto | int = "auto"

    @field_validator("batch_size", "learning_rate_multiplier", "n_epochs", mode="before")
    @classmethod
    def _auto_or_in_range(cls, value: Any, info: ValidationInfo) -> Any:
        # One readable message instead of one error per member of the union.
        low, high, whole = _HYPERPARAMETER_RANGES[str(info.field_name)]
        if value == "auto":
            return value
        kind = "an integer" if whole else "a number"
        span = f"from {low:g} to {high:g}" if high is not None else f"above {low:g}"
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and (not whole or float(value).is_integer())
        ok = ok and (value >= low if whole else value > low) and (high is None or value <= high)
        if not ok:
            raise PydanticCustomError(
                "auto_or_number", f'must be "auto" or {kind} {span}, not {value!r}'
            )
        return int(value) if whole else float(value)


class SupervisedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: HyperparametersIn | None = None


class DpoHyperparametersIn(HyperparametersIn):
    """OpenAI's DPO hyperparameters: the supervised ones and beta ("auto": 0.1)."""

    beta: Auto | float = "auto"

    @field_validator("beta", mode="before")
    @classmethod
    def _beta_auto_or_in_range(cls, value: Any, info: ValidationInfo) -> Any:
        return cls._auto_or_in_range(value, info)


class DpoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparametersIn | None = None


class MethodIn(BaseModel):
    """OpenAI's `method`: its `type` names the block (`supervised`, ...) holding its settings.

    A new method is one more optional block here and one more entry in
    app/openai/fine_tuning.METHODS; `block()` hands the chosen one over.
    """

    model_config = ConfigDict(extra="allow")

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedIn | None = None
    dpo: DpoIn | None = None

    def block(self) -> BaseModel | None:
        """The settings block of the chosen type (None when the request left it out)."""
        value = getattr(self, self.type, None)
        return value if isinstance(value, BaseModel) else None


class AdapterIn(BaseModel):
    """This server's extension (`llmide.adapter`): train a LoRA or QLoRA adapter instead of
    every weight. Unset numbers keep the run defaults (r 8, alpha 16, dropout 0.05)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["full", "lora", "qlora"] = "full"
    r: int | None = Field(None, ge=1, le=512)
    alpha: int | None = Field(None, ge=1, le=4096)
    dropout: float | None = Field(None, ge=0, lt=1)


class LlmideIn(BaseModel):
    """Fields OpenAI's API has no name for, under one key (`extra_body={"llmide": {...}}`)."""

    model_config = ConfigDict(extra="forbid")

    adapter: AdapterIn | None = None


class Adapter(BaseModel):
    type: Literal["full", "lora", "qlora"]
    r: int | None = None
    alpha: int | None = None
    dropout: float | None = None


class Llmide(BaseModel):
    adapter: Adapter


class FineTuningJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=255)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    hyperparameters: HyperparametersIn | None = None
    method: MethodIn | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    integrations: list[dict[str, Any]] | None = None
    # Accepted for client compatibility; not stored (runs have no metadata yet).
    metadata: dict[str, str] | None = None
    llmide: LlmideIn | None = None

    def chosen_hyperparameters(self) -> HyperparametersIn:
        """The hyperparameters from `method.supervised` or the older top-level field."""
        if self.integrations:
            raise ValidationFailed(
                "integrations (Weights & Biases) are not supported by this server",
                param="integrations",
            )
        if self.method is None:
            return self.hyperparameters or HyperparametersIn()
        kind = self.method.type
        if kind not in ("supervised", "dpo"):
            raise ValidationFailed(
                f"method {kind!r} is not supported; 'supervised' and 'dpo' fine-tuning are",
                param="method.type",
            )
        for other in ("supervised", "dpo"):
            if other != kind and getattr(self.method, other) is not None:
                raise ValidationFailed(
                    f"method.{other} is given but method.type is {kind!r}: give the settings "
                    f"of the chosen method in method.{kind}",
                    param=f"method.{other}",
                )
        block = self.method.block()
        nested = getattr(block, "hyperparameters", None)
        if nested is not None and self.hyperparameters is not None:
            raise ValidationFailed(
                f"give hyperparameters either in method.{kind} or at the top level, not both",
                param="hyperparameters",
            )
        if kind == "dpo" and nested is None and self.hyperparameters is not None:
            # The top-level field is the supervised one's older spelling: it has no beta.
            return DpoHyperparametersIn(**self.hyperparameters.model_dump())
        return nested or self.hyperparameters or HyperparametersIn()

    @property
    def method_type(self) -> str:
        return self.method.type if self.method is not None else "supervised"


class Hyperparameters(BaseModel):
    batch_size: int | Auto | None
    learning_rate_multiplier: float | Auto
    n_epochs: int | float | Auto


class Supervised(BaseModel):
    hyperparameters: Hyperparameters


class DpoHyperparameters(Hyperparameters):
    beta: float | Auto


class Dpo(BaseModel):
    hyperparameters: DpoHyperparameters


class Method(BaseModel):
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: Supervised | None = None
    dpo: Dpo | None = None

    @model_serializer(mode="wrap")
    def _only_the_chosen_block(self, handler: SerializerFunctionWrapHandler) -> Any:
        # OpenAI's schema types each block as an object: the unchosen ones are left out.
        return {key: value for key, value in handler(self).items() if value is not None}


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: Hyperparameters
    method: Method
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    # "paused" is OpenAI's own status of a paused job (its published enum lacks it).
    status: Literal[
        "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
    ]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    integrations: list[dict[str, Any]] | None = None
    seed: int
    estimated_finish: int | None
    metadata: dict[str, str] | None = None
    llmide: Llmide | None = None


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] = Field(default_factory=dict)


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float]


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    first_id: str | None
    last_id: str | None
    has_more: bool


# --- embeddings ---------------------------------------------------------------------------
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingCreate(BaseModel):
    """OpenAI's embeddings request; unknown fields are refused by name."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=255)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=65536)
    # An end-user id for OpenAI's abuse monitoring: it changes no output, so it is accepted
    # and kept nowhere.
    user: str | None = Field(None, max_length=256)

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list of texts or of token arrays; empty ones are refused."""
        value = self.input
        if isinstance(value, str):
            items: list[Any] = [value]
        elif value and all(isinstance(v, int) for v in value):
            items = [value]  # one token array
        else:
            items = list(value)
        if not items:
            raise ValidationFailed("input must hold at least one text", param="input")
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise ValidationFailed(
                f"at most {MAX_EMBEDDING_INPUTS} inputs per request, not {len(items)}",
                param="input",
            )
        for index, item in enumerate(items):
            if isinstance(item, str) and not item:
                raise ValidationFailed(f"input[{index}] is an empty string", param="input")
            if isinstance(item, list) and not item:
                raise ValidationFailed(f"input[{index}] is an empty token array", param="input")
        return items


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string of little-endian float32 with base64


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# --- models -------------------------------------------------------------------------------
class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# --- chat completions and completions -----------------------------------------------------
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """Sampling parameters both endpoints share; unknown OpenAI options are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=255)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=8)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    def check_supported(self) -> None:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValidationFailed("at most 4 stop sequences are allowed", param="stop")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionCreate(_GenerationRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    logprobs: bool | None = None
    tools: list[dict[str, Any]] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs:
            raise ValidationFailed("logprobs are not supported by this server", param="logprobs")
        if self.tools:
            raise ValidationFailed("tools are not supported by this server", param="tools")

    def plain_messages(self) -> list[dict[str, str]]:
        """Messages with text content only: parts of type "text" are joined, others refused."""
        plain = []
        for index, message in enumerate(self.messages):
            content = message.content
            if isinstance(content, list):
                texts = []
                for part in content:
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise ValidationFailed(
                            f"messages[{index}]: only text content parts are supported "
                            f"(got type {part.get('type')!r})",
                            param=f"messages[{index}].content",
                        )
                    texts.append(part["text"])
                content = "".join(texts)
            plain.append({"role": message.role, "content": content or ""})
        return plain

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionCreate(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        for name in ("echo", "logprobs", "suffix"):
            if getattr(self, name):
                raise ValidationFailed(f"{name} is not supported by this server", param=name)
        if self.best_of not in (None, 1):
            raise ValidationFailed("best_of is not supported by this server", param="best_of")

    def prompt_text(self) -> str:
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if len(prompt) == 1 and isinstance(prompt[0], str):
            return prompt[0]
        if prompt and all(isinstance(p, str) for p in prompt):
            raise ValidationFailed(
                "only one prompt per request is supported; send several requests instead",
                param="prompt",
            )
        raise ValidationFailed(
            "prompt must be a string (token arrays are not supported)", param="prompt"
        )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
