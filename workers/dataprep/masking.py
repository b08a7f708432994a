"""A canonical row of any schema as the model reads it, with the tokens the loss counts.

`encode_row(tokenizer, row, schema)` -> input_ids + labels (IGNORE_INDEX on masked positions)
and the warnings the model view explains. Which tokens are trained is not decided here:
conversations (chat rows, and prompt/completion, instruction and seq2seq rows through the chat
template, as SFT turns them into a user turn and an answer) are rendered and labelled by
`workers.engine.loss_mask`, the code training and the registry's perplexity use, so the view
shows exactly the tokens training counts. A row training refuses (a template that raises on it
or does not render turn by turn) is shown with nothing trained and a warning.

Without the chat template (`chat_template=False`, for a causal-LM tokenization), prompt rows are
plain text (instruction rows in the Alpaca format) with the prompt masked; text trains whole
(with EOS); classification trains no token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.engine import loss_mask
from workers.engine.loss_mask import Message
from workers.engine.tokenizer import CHAT_TEMPLATE

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

    @property
    def for_loss(self) -> loss_mask.Rendered:
        return loss_mask.Rendered(self.text, self.trained if self.trains else [])


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


def _plain(messages: list[Message]) -> str:
    """A conversation's turns one per line: only to show a row the template refuses."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def _render_chat(tokenizer: Any, messages: list[Any]) -> Rendered:
    """Through `loss_mask.render_conversation`, exactly as training renders and masks it; a
    model without a template gets the engine's (flagged), as training gives it."""
    template = None if has_chat_template(tokenizer) else CHAT_TEMPLATE
    warnings: list[str] = [] if template is None else [TEMPLATE_MISSING]
    clean: list[Message] = [
        {"role": str(m.get("role")), "content": str(m.get("content") or "")}
        for m in messages
        if isinstance(m, dict)
    ]
    answers = [m for m in clean if m["role"] == "assistant"]
    if not answers:
        warnings.append(NO_ANSWER)
    if any(not m["content"].strip() for m in answers):
        warnings.append(EMPTY_ANSWER)
    if not clean:
        return Rendered(text="", trained=[], warnings=warnings)
    try:
        conversation = loss_mask.render_conversation(clean, tokenizer, chat_template=template)
    except loss_mask.TemplateError as refused:
        # Training refuses this row: shown with nothing trained, and the reason (the template
        # raised on the conversation or a prefix of it, or renders prefixes differently).
        warnings.append(TEMPLATE_FAILED if refused.__cause__ else TEMPLATE_NOT_INCREMENTAL)
        try:
            text = str(tokenizer.apply_chat_template(clean, tokenize=False, chat_template=template))
        except Exception:  # it raises on the whole conversation too (unknown role, order)
            text = _plain(clean)
        return Rendered(text=text, trained=[], warnings=warnings)
    return Rendered(text=conversation.text, trained=conversation.spans, warnings=warnings)


def _prompt_answer(tokenizer: Any, prompt: str, answer: str, *, chat_template: bool) -> Rendered:
    if chat_template:  # what SFT trains on: a user turn and the answer
        return _render_chat(tokenizer, loss_mask.pair_conversation(prompt, answer))
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
    if schema in ("classification", "token_classification"):
        # The loss is on labels (the row's or each word's), not on producing tokens.
        return Rendered(text=row.get("text") or "", trained=[], trains=False)
    if schema == "chat":
        return _render_chat(tokenizer, list(row.get("messages") or []))
    if schema in ("preference", "kto"):
        # The first answer (the chosen one of a pair) after its prompt; `render_answers` gives
        # every answer of the row.
        return render_answers(tokenizer, row, schema)[0][1]
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
        if chat_template:
            prompt = loss_mask.instruction_prompt(instruction, extra)
        else:
            pattern = ALPACA_WITH_INPUT if extra.strip() else ALPACA_NO_INPUT
            prompt = pattern.format(instruction=instruction, input=extra)
        return _prompt_answer(
            tokenizer, prompt, row.get("output") or "", chat_template=chat_template
        )
    raise ValueError(f"unknown schema {schema!r}")


def render_answers(tokenizer: Any, row: dict[str, Any], schema: str) -> list[tuple[str, Rendered]]:
    """Each answer of a preference row after its prompt, named ("chosen", "rejected"; a KTO
    row's one answer is "desirable" or "undesirable"). The trained characters are the
    answer's: preference losses compare the answers' log-probabilities, never the prompt's."""
    prompt = list(row.get("prompt") or [])
    if schema == "kto":
        name = "desirable" if row.get("label") else "undesirable"
        return [(name, _render_chat(tokenizer, prompt + list(row.get("completion") or [])))]
    return [
        (name, _render_chat(tokenizer, prompt + list(row.get(name) or [])))
        for name in ("chosen", "rejected")
    ]


def encode_rendered(
    tokenizer: Any,
    rendered: Sequence[Rendered],
    *,
    max_length: int | None = None,
) -> list[Encoded]:
    """Tokenize a batch in one call and label it with `loss_mask.encode`: training's code."""
    encodings = loss_mask.encode(
        tokenizer, [item.for_loss for item in rendered], max_length=max_length
    )
    stops = stop_token_ids(tokenizer)
    out = []
    for item, encoding in zip(rendered, encodings, strict=True):
        warnings = list(item.warnings)
        if encoding.truncated:
            warnings.append(TRUNCATED)
        if item.trains and item.trained and not any(lab in stops for lab in encoding.labels):
            warnings.append(MISSING_EOS)
        out.append(
            Encoded(
                input_ids=encoding.input_ids,
                labels=encoding.labels,
                offsets=encoding.offsets,
                text=item.text,
                num_tokens=encoding.num_tokens,
                truncated=encoding.truncated,
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
