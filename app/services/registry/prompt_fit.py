"""Whether a prompt and its reply fit a model version's context, judged on the web side.

Read from the version's own files without torch: the context from config.json, the tokens from
tokenizer.json (the Rust `tokenizers` library), the chat template from tokenizer_config.json or
chat_template.jinja, rendered the way transformers renders it (a sandboxed Jinja2). So an
evaluation whose prompt cannot fit is refused when it is submitted, naming the limit, instead of
failing later in the worker with IndexError. Unknown facts (a GGUF file, no tokenizer.json)
skip the check rather than guess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.core.errors import ValidationFailed


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def context_length(folder: Path) -> int | None:
    """The positions the model has (GPT-2's n_positions, others' max_position_embeddings)."""
    config = _json(folder / "config.json")
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _token_text(value: Any) -> str:
    if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
        return str(value.get("content") or "")
    return str(value or "")


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    return template if isinstance(template, str) else None


def _rendered(folder: Path, prompt: str) -> str:
    """The text the evaluation worker tokenizes for `prompt` (see workers/engine/evaluation)."""
    config = _json(folder / "tokenizer_config.json")
    template = _chat_template(folder, config)
    if template is None:
        return prompt
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=[{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
        )
    except Exception:  # a template this renderer cannot run: count the bare prompt
        return prompt


def prompt_tokens(folder: Path, prompt: str) -> int | None:
    """Tokens of the prompt as the model sees it, or None without a tokenizer.json."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # a tokenizer this version of the library cannot read
        return None
    return len(tokenizer.encode(_rendered(folder, prompt)).ids)


def check_prompts_fit(folder: Path, prompts: list[str], max_new_tokens: int) -> None:
    """Refuse (400) prompts that with `max_new_tokens` exceed the version's context."""
    if not folder.is_dir():
        return
    architectures = _json(folder / "config.json").get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return  # a classifier labels the prompts; it generates nothing
    context = context_length(folder)
    if context is None:
        return
    if max_new_tokens >= context:
        raise ValidationFailed(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt: this model's context "
            f"is {context} tokens",
            param="max_new_tokens",
        )
    for index, prompt in enumerate(prompts, start=1):
        tokens = prompt_tokens(folder, prompt)
        if tokens is not None and tokens + max_new_tokens > context:
            raise ValidationFailed(
                f"prompt {index} is {tokens} tokens; with max_new_tokens {max_new_tokens} it "
                f"needs {tokens + max_new_tokens}, more than this model's context of {context} "
                f"tokens: shorten it to at most {context - max_new_tokens} tokens or lower "
                "max_new_tokens",
                param="prompts",
            )
