"""The ONE place that decides which tokens of a canonical row count in the loss.

`encode_row(tokenizer, row, schema)` -> input_ids + labels (IGNORE_INDEX on masked positions):
prompts, system and user turns are masked; assistant answers, completions, outputs and targets
(with their end-of-turn/EOS token) are trained; plain text is trained whole. The preview shows
exactly this, and the training engine can import it so that what the user saw is what trains.

Chat rows go through the tokenizer's own chat template. Which characters belong to an answer is
found by rendering the conversation's prefixes (up to turn i with a generation prompt, up to the
end of turn i): a token is trained when it lies (mostly) inside an answer's characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100

# Plain rendering of instruction rows when no chat template is used (the Alpaca format).
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
# End-of-turn tokens of common templates: they stop generation like EOS does.
END_OF_TURN_TOKENS = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>")
# Rendering used, and flagged, when a model has no chat template of its own.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'assistant: ' }}{%- endif -%}"
)

# Warning codes (the preview explains them in words).
TEMPLATE_MISSING = "template_missing"
TEMPLATE_FAILED = "template_failed"
TEMPLATE_NOT_INCREMENTAL = "template_not_incremental"
EMPTY_ANSWER = "empty_answer"
NO_ANSWER = "no_answer"
TRUNCATED = "truncated"
MISSING_EOS = "missing_eos"


@dataclass
class Rendered:
    """A row as text, with the character spans whose tokens are trained."""

    text: str
    trained: list[tuple[int, int]]
    warnings: list[str] = field(default_factory=list)
    trains: bool = True  # False for classification: the loss is on the label, not on tokens


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    offsets: list[tuple[int, int]]
    text: str
    num_tokens: int  # before truncation
    truncated: bool
    warnings: list[str]


def stop_token_ids(tokenizer: Any) -> set[int]:
    """EOS and any end-of-turn token the vocabulary has."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return ids


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render_chat(tokenizer: Any, messages: list[dict[str, Any]], template: str | None) -> Rendered:
    def render(msgs: list[dict[str, Any]], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=generation_prompt, chat_template=template
        )

    warnings: list[str] = [] if template is None else [TEMPLATE_MISSING]
    clean = [
        {"role": str(m.get("role")), "content": str(m.get("content") or "")}
        for m in messages
        if isinstance(m, dict)
    ]
    if not clean:
        return Rendered(text="", trained=[], warnings=[NO_ANSWER])
    try:
        text = render(clean, False)
    except Exception:  # a template that raises on this conversation (unknown role, order)
        template = FALLBACK_CHAT_TEMPLATE
        warnings.append(TEMPLATE_FAILED)
        text = render(clean, False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(clean):
        if message["role"] != "assistant":
            continue
        if not message["content"].strip():
            warnings.append(EMPTY_ANSWER)
        try:
            start = len(render(clean[:i], True)) if i else 0
            end = len(render(clean[: i + 1], False))
            prefix_ok = text.startswith(render(clean[: i + 1], False)) and start <= end
        except Exception:
            prefix_ok = False
        if not prefix_ok:
            # The template renders a prefix differently from the whole (some drop earlier
            # reasoning, say): train the answer's own characters where they occur.
            if TEMPLATE_NOT_INCREMENTAL not in warnings:
                warnings.append(TEMPLATE_NOT_INCREMENTAL)
            found = text.find(message["content"], cursor)
            if found < 0:
                continue
            start, end = found, found + len(message["content"])
        spans.append((start, end))
        cursor = end
    if not any(m["role"] == "assistant" for m in clean):
        warnings.append(NO_ANSWER)
    return Rendered(text=text, trained=spans, warnings=warnings)


def _prompt_answer(tokenizer: Any, prompt: str, answer: str, *, chat_template: bool) -> Rendered:
    if chat_template and has_chat_template(tokenizer):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return _render_chat(tokenizer, messages, None)
    eos = tokenizer.eos_token or ""
    text = prompt + answer + eos
    warnings = [EMPTY_ANSWER] if not answer.strip() else []
    return Rendered(text=text, trained=[(len(prompt), len(text))], warnings=warnings)


def render_row(
    tokenizer: Any, row: dict[str, Any], schema: str, *, chat_template: bool = True
) -> Rendered:
    """The row as the model reads it, and which characters it learns to produce."""
    if schema == "text":
        text = (row.get("text") or "") + (tokenizer.eos_token or "")
        return Rendered(text=text, trained=[(0, len(text))])
    if schema == "classification":
        return Rendered(text=row.get("text") or "", trained=[], trains=False)
    if schema == "chat":
        messages = list(row.get("messages") or [])
        template = None if has_chat_template(tokenizer) else FALLBACK_CHAT_TEMPLATE
        return _render_chat(tokenizer, messages, template)
    if schema == "prompt_completion":
        return _prompt_answer(
            tokenizer,
            row.get("prompt") or "",
            row.get("completion") or "",
            chat_template=chat_template,
        )
    if schema == "seq2seq":
        return _prompt_answer(
            tokenizer,
            row.get("source") or "",
            row.get("target") or "",
            chat_template=chat_template,
        )
    if schema == "instruction":
        instruction, extra = row.get("instruction") or "", row.get("input") or ""
        if chat_template and has_chat_template(tokenizer):
            prompt = instruction + (f"\n\n{extra}" if extra else "")
        else:
            pattern = ALPACA_WITH_INPUT if extra else ALPACA_NO_INPUT
            prompt = pattern.format(instruction=instruction, input=extra)
        return _prompt_answer(
            tokenizer, prompt, row.get("output") or "", chat_template=chat_template
        )
    raise ValueError(f"unknown schema {schema!r}")


def _in_spans(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    """A token counts when most of its characters (or its start, for empty ones) are trained."""
    for s, e in spans:
        if end <= start:
            if s <= start < e:
                return True
            continue
        overlap = min(end, e) - max(start, s)
        if overlap > 0 and overlap * 2 >= end - start:
            return True
    return False


def _labels(ids: list[int], offsets: list[tuple[int, int]], item: Rendered) -> list[int]:
    if not item.trains or not item.trained:
        return [IGNORE_INDEX] * len(ids)
    if item.trained == [(0, len(item.text))]:  # plain text: every token trains
        return list(ids)
    return [
        token if _in_spans(s, e, item.trained) else IGNORE_INDEX
        for token, (s, e) in zip(ids, offsets, strict=True)
    ]


def encode_rendered(
    tokenizer: Any,
    rendered: Sequence[Rendered],
    *,
    max_length: int | None = None,
) -> list[Encoded]:
    """Tokenize a batch in one call into the Rust tokenizer; labels from the trained spans."""
    backend = tokenizer.backend_tokenizer
    encodings = backend.encode_batch([r.text for r in rendered], add_special_tokens=False)
    stops = stop_token_ids(tokenizer)
    out = []
    for item, encoding in zip(rendered, encodings, strict=True):
        ids = list(encoding.ids)
        offsets = [tuple(o) for o in encoding.offsets]
        labels = _labels(ids, offsets, item)
        warnings = list(item.warnings)
        total = len(ids)
        truncated = max_length is not None and total > max_length
        if truncated:
            ids, labels, offsets = ids[:max_length], labels[:max_length], offsets[:max_length]
            warnings.append(TRUNCATED)
        if item.trains and item.trained and not any(lab in stops for lab in labels):
            warnings.append(MISSING_EOS)
        out.append(
            Encoded(
                input_ids=ids,
                labels=labels,
                offsets=offsets,  # type: ignore[arg-type]
                text=item.text,
                num_tokens=total,
                truncated=truncated,
                warnings=warnings,
            )
        )
    return out


def encode_row(
    tokenizer: Any,
    row: dict[str, Any],
    schema: str,
    *,
    max_length: int | None = None,
    chat_template: bool = True,
) -> Encoded:
    """input_ids and labels (IGNORE_INDEX where the loss skips) for one canonical row."""
    rendered = render_row(tokenizer, row, schema, chat_template=chat_template)
    return encode_rendered(tokenizer, [rendered], max_length=max_length)[0]
