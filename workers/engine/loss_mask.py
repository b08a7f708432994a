"""THE one place that decides which tokens of a conversation count in the loss.

Training (`sft.build_sft_dataset`), the registry's perplexity (`evaluation`) and the dataset
"model view" (`workers/dataprep/masking.py`) all call `render_conversation` + `encode`, so what
the view highlights is exactly what training counts.

Rule: the tokens of each assistant turn are trained (its content and the template's end-of-turn
markup, so the model learns to stop); nothing of the system, user or tool turns nor of the
template around them. A token belongs to an answer when its FIRST character lies inside the
answer's characters: the model emits a token at the point where its first character starts, so
a token that starts in the prompt is input the model is given, and a token that starts in the
answer (even if it runs past its end) is one the model must produce to finish it.

Kept light (numpy only; no torch) so the dataset preparation worker imports it cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

IGNORE_INDEX = -100  # labels the loss skips
Message = dict[str, str]
Span = tuple[int, int]


class TemplateError(ValueError):
    """The chat template cannot say where a conversation's answers are: it refuses the
    conversation, or renders a prefix of it differently from the whole of it."""


def pair_conversation(prompt: str, answer: str) -> list[Message]:
    """A prompt/completion, instruction or seq2seq row as the conversation training uses."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def instruction_prompt(instruction: str, given: str) -> str:
    """Alpaca's convention: the optional input follows the instruction after a blank line."""
    return f"{instruction}\n\n{given}" if given.strip() else instruction


@dataclass(frozen=True)
class Rendered:
    """A row as the text the model reads, with the character spans whose tokens are trained."""

    text: str
    spans: list[Span]

    @property
    def whole(self) -> bool:
        """Every token trains (plain text): no offsets are needed to label it."""
        return self.spans == [(0, len(self.text))]


def render_conversation(
    messages: Sequence[Message], tokenizer: Any, *, chat_template: str | None = None
) -> Rendered:
    """The conversation through the chat template, and the character ranges of its answers.

    Assistant turn i spans from the end of the prompt rendered for it (messages before i plus
    the generation prompt) to the end of the rendering of messages up to i. Every template the
    engine meets renders a conversation as the concatenation of its turns, so these prefixes
    are prefixes of the full text; a template that does not (or that raises) is refused with
    TemplateError. `chat_template` overrides the tokenizer's own (for a model without one).
    """

    def render(msgs: Sequence[Message], generation_prompt: bool) -> str:
        return str(
            tokenizer.apply_chat_template(
                list(msgs),
                tokenize=False,
                add_generation_prompt=generation_prompt,
                chat_template=chat_template,
            )
        )

    try:
        text = render(messages, False)
        spans: list[Span] = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = render(messages[:i], True) if i else ""
            upto = render(messages[: i + 1], False)
            if not (text.startswith(upto) and upto.startswith(prompt)):
                raise TemplateError(
                    "the chat template does not render a conversation turn by turn; "
                    "the answer tokens cannot be located for loss masking"
                )
            spans.append((len(prompt), len(upto)))
    except TemplateError:
        raise
    except Exception as exc:  # jinja's raise_exception (unknown role, order), a missing key
        raise TemplateError(f"the chat template refuses this conversation: {exc}") from exc
    return Rendered(text=text, spans=spans)


def trained_mask(offsets: Any, spans: Sequence[Span]) -> np.ndarray:
    """Per token (offsets: (start, end) per token), whether the loss counts it: its first
    character lies in a span. Vectorised, for the tokenization cache's millions of tokens."""
    starts = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)[:, 0]
    mask = np.zeros(starts.shape[0], dtype=bool)
    for lo, hi in spans:
        mask |= (starts >= lo) & (starts < hi)
    return mask


@dataclass(frozen=True)
class Encoded:
    """One rendered row tokenized: ids and labels cut at max_length, offsets into `text`."""

    input_ids: list[int]
    labels: list[int]
    offsets: list[Span]
    num_tokens: int  # before truncation

    @property
    def truncated(self) -> bool:
        return self.num_tokens > len(self.input_ids)


def encode(
    tokenizer: Any, rendered: Sequence[Rendered], *, max_length: int | None = None
) -> list[Encoded]:
    """Tokenize a batch in one call into the Rust tokenizer (no special tokens added: the
    template writes its own) and label each token by `trained_mask`; truncated on the right."""
    encodings = tokenizer.backend_tokenizer.encode_batch(
        [r.text for r in rendered], add_special_tokens=False
    )
    out = []
    for item, encoding in zip(rendered, encodings, strict=True):
        ids = list(encoding.ids)
        offsets: list[Span] = [(int(s), int(e)) for s, e in encoding.offsets]
        mask = [True] * len(ids) if item.whole else trained_mask(offsets, item.spans).tolist()
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
        cut = len(ids) if max_length is None else max_length
        out.append(Encoded(ids[:cut], labels[:cut], offsets[:cut], num_tokens=len(ids)))
    return out


def mask_conversation(
    messages: Sequence[Message], tokenizer: Any, max_length: int
) -> tuple[list[int], list[int]]:
    """input_ids and labels of one conversation (IGNORE_INDEX outside the answers), cut to
    max_length tokens (the end of a long conversation is dropped)."""
    encoded = encode(tokenizer, [render_conversation(messages, tokenizer)], max_length=max_length)
    return encoded[0].input_ids, encoded[0].labels
