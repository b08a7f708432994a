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
# "paused" is OpenAI's own status of a paused job (its published enum lacks it).
JobStatus = Literal[
    "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
]
EventLevel = Literal["info", "warn", "error"]


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
    status: JobStatus
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
    level: EventLevel
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


# --- batches ------------------------------------------------------------------------------
class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str = Field(min_length=1, max_length=64)
    completion_window: str = Field(min_length=1, max_length=16)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    # The newer API's output_expires_after: files here are kept until deleted.


class BatchError(BaseModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating",
        "failed",
        "in_progress",
        "finalizing",
        "completed",
        "expired",
        "cancelling",
        "cancelled",
    ]
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


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
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool | None = None  # OpenAI's padding of chunks: there is none here


# OpenAI request fields this server knows but cannot honour: named in a 400, never ignored.
_UNSUPPORTED = {
    "audio": "audio output",
    "modalities": "output modalities other than text",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
    "reasoning_effort": "reasoning effort",
    "verbosity": "verbosity",
    "functions": "the deprecated functions (use tools)",
    "function_call": "the deprecated function_call (use tool_choice)",
    "store": "stored completions",
    "metadata": "stored completions' metadata",
    "prompt_cache_key": "prompt caching keys",
    "prompt_cache_retention": "prompt caching",
    "safety_identifier": "safety identifiers",
    "best_of": "best_of above 1",
    "suffix": "suffixes (insertion)",
}
# Fields that change nothing on this server whatever their value: accepted as OpenAI does.
_NEUTRAL = {"user", "service_tier"}


class _GenerationRequest(BaseModel):
    """Sampling parameters both endpoints share.

    Unknown fields are refused (400 naming the field), as OpenAI does; known OpenAI fields
    this server cannot honour are refused by name too, unless given their neutral value.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=255)
    max_tokens: int | None = Field(None, ge=0, le=32768)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=8)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, max_length=300)

    def check_supported(self) -> None:
        for name, value in (self.model_extra or {}).items():
            if name in _NEUTRAL:
                continue
            neutral = value in (None, False, 1) if name == "best_of" else value in (None, False)
            if name in _UNSUPPORTED and neutral:
                continue
            if name in _UNSUPPORTED:
                raise ValidationFailed(
                    f"{name}: {_UNSUPPORTED[name]} are not supported by this server", param=name
                )
            raise ValidationFailed(f"unrecognized request argument supplied: {name}", param=name)
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValidationFailed("at most 4 stop sequences are allowed", param="stop")
        stops = self.stop_list
        if stops is not None and any(not s for s in stops):
            raise ValidationFailed("stop sequences must not be empty", param="stop")
        if self.stream_options is not None and not self.stream:
            raise ValidationFailed(
                "stream_options is only allowed with stream: true", param="stream_options"
            )

    @property
    def stop_list(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop

    def token_bias(self) -> dict[int, float] | None:
        """logit_bias with its keys as token ids (OpenAI sends them as JSON strings)."""
        if not self.logit_bias:
            return None
        bias: dict[int, float] = {}
        for key, value in self.logit_bias.items():
            if not key.lstrip("-").isdigit() or int(key) < 0:
                raise ValidationFailed(f"logit_bias: {key!r} is not a token id", param="logit_bias")
            if not -100 <= value <= 100:
                raise ValidationFailed(
                    f"logit_bias: the bias of token {key} must be from -100 to 100",
                    param="logit_bias",
                )
            bias[int(key)] = float(value)
        return bias

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    # OpenAI's field is called schema; pydantic's BaseModel has a method of that name.
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoiceFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedToolChoiceFunction


class ChatCompletionCreate(_GenerationRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.max_tokens == 0:
            raise ValidationFailed("max_tokens must be at least 1", param="max_tokens")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValidationFailed("top_logprobs needs logprobs: true", param="top_logprobs")
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
            raise ValidationFailed(
                "response_format of type json_schema needs a json_schema",
                param="response_format.json_schema",
            )
        if self.tool_choice is not None and not self.tools and self.tool_choice != "none":
            raise ValidationFailed("tool_choice needs tools", param="tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {tool.function.name for tool in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise ValidationFailed(
                    f"tool_choice names {self.tool_choice.function.name!r}, which is not "
                    "among the tools",
                    param="tool_choice",
                )
        if self.tools and fmt and fmt.type != "text" and self.tool_choice != "none":
            raise ValidationFailed(
                "response_format cannot be combined with tools on this server; "
                "give one or the other",
                param="response_format",
            )

    def plain_messages(self) -> list[dict[str, Any]]:
        """Messages with text content only: parts of type "text" are joined, others refused;
        earlier tool calls and tool results travel with them."""
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
            entry: dict[str, Any] = {"role": message.role, "content": content or ""}
            if message.tool_calls:
                entry["tool_calls"] = message.tool_calls
            if message.tool_call_id:
                entry["tool_call_id"] = message.tool_call_id
            plain.append(entry)
        return plain

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionCreate(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)

    def check_supported(self) -> None:
        super().check_supported()
        if self.max_tokens == 0 and not self.echo:
            raise ValidationFailed(
                "max_tokens 0 generates nothing; it is only useful with echo", param="max_tokens"
            )

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a text or a token-id array."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise ValidationFailed("prompt must not be empty", param="prompt")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        items: list[str | list[int]] = []
        for item in prompt:
            if isinstance(item, list) and not item:
                raise ValidationFailed("a token-array prompt must not be empty", param="prompt")
            items.append(item)  # type: ignore[arg-type]
        if len(items) * (self.n or 1) > MAX_CHOICES:
            raise ValidationFailed(
                f"at most {MAX_CHOICES} choices per request (prompts times n)", param="prompt"
            )
        return items


# Prompts times n: the facade fans every choice out to the inference server at once.
MAX_CHOICES = 64


class PromptTokensDetails(BaseModel):
    # Prompt tokens the engine took from its prefix cache instead of prefilling them again
    # (llama.cpp deployments; 0 where the engine has no such cache).
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    # Left out of the answer when there are none (OpenAI's schema has no null here).
    tool_calls: list[ToolCall] | None = Field(default=None, exclude_if=lambda v: v is None)


class ChatLogprobs(BaseModel):
    content: list[dict[str, Any]] | None
    refusal: list[dict[str, Any]] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
