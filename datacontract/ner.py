"""Named-entity rows: character spans <-> BIO/BIOES tags over words, and their checks.

A `token_classification` row is `{"text", "entities": [{"start", "end", "label"}]}` with
character offsets into `text` (end exclusive): the one form that keeps Chinese text, which has
no spaces, exact. CoNLL files and `tokens` + `tags` rows are converted to it at upload
(`from_tokens`), and training, evaluation and serving go back to tags over *words*
(`word_tags`): runs of letters and digits, single punctuation marks and single CJK characters
(the split BERT's basic tokenizer makes), cut again at every entity boundary so each word is
wholly inside or outside an entity. Entity-level scores (seqeval) are unchanged by that split;
token accuracy is then per word.

Pure functions of the standard library: the web's ingest, the training engine and the
inference server all import this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Scripts written without spaces: one character is one word (Han with its extensions and
# compatibility forms, kana; Hangul is written with spaces and stays in runs).
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK_CHAR = re.compile(f"[{CJK}]")
_WORD = re.compile(f"[{CJK}]|(?:(?![{CJK}])\\w)+|\\S")
TAG_PATTERN = re.compile(r"^(O|[BIES]-\S+)$")
OUTSIDE = "O"
SCHEMES = ("BIO", "BIOES")


class TagError(ValueError):
    """A tag sequence or span list that breaks its scheme; the message names the position
    (`index`: the 0-based tag it is about, when it is about one)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Span:
    start: int
    end: int  # exclusive
    label: str

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "label": self.label}


def scheme_of(tags: Iterable[str]) -> str:
    """BIOES when any tag is E- or S-, else BIO (IOB2)."""
    return "BIOES" if any(t[:2] in ("E-", "S-") for t in tags) else "BIO"


def tags_to_spans(tags: Sequence[str], scheme: str | None = None) -> list[tuple[int, int, str]]:
    """Entities as (first word, last word + 1, label); strict: a tag sequence that breaks the
    scheme (I-X not after B-X/I-X, a BIOES entity without its E-, an unknown tag) raises
    TagError naming the 1-based position."""
    scheme = scheme or scheme_of(tags)
    spans: list[tuple[int, int, str]] = []
    open_at: int | None = None
    open_label = ""
    for i, tag in enumerate(tags):
        where = f"tag {i + 1} ({tag!r})"
        if not isinstance(tag, str) or not TAG_PATTERN.match(tag):
            raise TagError(f"{where} is not O or B-/I-/E-/S- followed by a type", i)
        prefix, label = (tag[0], tag[2:]) if tag != OUTSIDE else ("O", "")
        if scheme == "BIO" and prefix in ("E", "S"):
            raise TagError(f"{where}: E- and S- tags belong to BIOES, not BIO", i)
        if prefix in ("I", "E"):
            if open_at is None or open_label != label:
                before = "the start" if i == 0 else f"{tags[i - 1]!r}"
                raise TagError(f"{where} follows {before}: an entity must begin with B-{label}", i)
            if prefix == "E":
                spans.append((open_at, i + 1, label))
                open_at = None
            continue
        # O, B or S: whatever was open ends before this word.
        if open_at is not None:
            if scheme == "BIOES":
                raise TagError(f"{where}: the {open_label} entity before it has no E- tag", i)
            spans.append((open_at, i, open_label))
            open_at = None
        if prefix == "B":
            open_at, open_label = i, label
        elif prefix == "S":
            spans.append((i, i + 1, label))
    if open_at is not None:
        if scheme == "BIOES":
            raise TagError(f"the {open_label} entity at the end has no E- tag", len(tags) - 1)
        spans.append((open_at, len(tags), open_label))
    return spans


def spans_to_tags(
    n_words: int, spans: Iterable[tuple[int, int, str]], scheme: str = "BIO"
) -> list[str]:
    """Tags for n words from (first word, last word + 1, label) entities."""
    tags = [OUTSIDE] * n_words
    for first, stop, label in spans:
        if scheme == "BIOES" and stop - first == 1:
            tags[first] = f"S-{label}"
            continue
        tags[first] = f"B-{label}"
        for k in range(first + 1, stop):
            tags[k] = f"I-{label}"
        if scheme == "BIOES":
            tags[stop - 1] = f"E-{label}"
    return tags


def join_tokens(tokens: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Tokens as one text and each token's character span: a space between tokens, except
    between two CJK characters (Chinese CoNLL files hold one character or word per line)."""
    parts: list[str] = []
    offsets: list[tuple[int, int]] = []
    at = 0
    for i, token in enumerate(tokens):
        if i and not (_CJK_CHAR.match(tokens[i - 1][-1:]) and _CJK_CHAR.match(token[:1])):
            parts.append(" ")
            at += 1
        parts.append(token)
        offsets.append((at, at + len(token)))
        at += len(token)
    return "".join(parts), offsets


def from_tokens(tokens: Sequence[str], tags: Sequence[str]) -> dict[str, Any]:
    """A CoNLL sentence or a tokens + tags row as a canonical row (text + character spans)."""
    if len(tokens) != len(tags):
        raise TagError(f"{len(tokens)} tokens but {len(tags)} tags: one tag per token")
    if not tokens:
        raise TagError("no tokens")
    for i, token in enumerate(tokens):
        if not isinstance(token, str) or not token.strip() or any(c.isspace() for c in token):
            raise TagError(f"token {i + 1} ({token!r}) must be a non-empty string without spaces")
    text, offsets = join_tokens(tokens)
    entities = [
        Span(offsets[first][0], offsets[stop - 1][1], label).as_dict()
        for first, stop, label in tags_to_spans(tags)
    ]
    return {"text": text, "entities": entities}


def check_entities(text: str, entities: object) -> list[dict[str, Any]]:
    """Entities sorted by start, each inside the text, not empty, not overlapping another and
    labelled; raises TagError naming the first bad one (its 1-based place in the row)."""
    if not isinstance(entities, list):
        raise TagError('"entities" must be a list of {"start", "end", "label"} objects')
    spans: list[tuple[int, Span]] = []
    for i, entity in enumerate(entities, start=1):
        if isinstance(entity, list) and len(entity) == 3:  # doccano's [start, end, label]
            entity = dict(zip(("start", "end", "label"), entity, strict=True))
        if not isinstance(entity, dict):
            raise TagError(
                f"entity {i} must be an object with start, end and label "
                "(or a [start, end, label] list)"
            )
        start, end, label = entity.get("start"), entity.get("end"), entity.get("label")
        if not (type(start) is int and type(end) is int):
            raise TagError(f"entity {i}: start and end must be integers (character offsets)")
        if not isinstance(label, str) or not label.strip() or any(c.isspace() for c in label):
            raise TagError(f"entity {i}: label must be a non-empty string without spaces")
        if not 0 <= start < end <= len(text):
            raise TagError(
                f"entity {i} ({label} {start}-{end}) is out of range: the text has "
                f"{len(text)} characters and an entity needs 0 <= start < end <= length"
            )
        if not text[start:end].strip():
            raise TagError(f"entity {i} ({label} {start}-{end}) covers only whitespace")
        spans.append((i, Span(start, end, label)))
    spans.sort(key=lambda item: (item[1].start, item[1].end))
    for (i, a), (j, b) in zip(spans, spans[1:], strict=False):
        if b.start < a.end:
            raise TagError(
                f"entities {min(i, j)} and {max(i, j)} overlap ({a.label} {a.start}-{a.end}, "
                f"{b.label} {b.start}-{b.end}): nested entities are not supported"
            )
    return [span.as_dict() for _, span in spans]


def words(text: str, cuts: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Character spans of the words of a text (runs of letters/digits, single punctuation
    marks, single CJK characters), also cut at each offset in `cuts`."""
    cut_set = sorted(set(cuts))
    out: list[tuple[int, int]] = []
    for match in _WORD.finditer(text):
        start, end = match.span()
        for cut in cut_set:
            if start < cut < end:
                out.append((start, cut))
                start = cut
        out.append((start, end))
    return out


def word_tags(
    text: str, entities: Sequence[Mapping[str, Any]]
) -> tuple[list[tuple[int, int]], list[str]]:
    """The row's words (cut at entity boundaries) and their BIO tags."""
    spans = [(int(e["start"]), int(e["end"]), str(e["label"])) for e in entities]
    cuts = [offset for start, end, _ in spans for offset in (start, end)]
    spans_of_words = words(text, cuts)
    tags = [OUTSIDE] * len(spans_of_words)
    index = 0
    for start, end, label in sorted(spans):
        first = True
        while index < len(spans_of_words) and spans_of_words[index][0] < start:
            index += 1
        while index < len(spans_of_words) and spans_of_words[index][1] <= end:
            tags[index] = f"{'B' if first else 'I'}-{label}"
            first = False
            index += 1
    return spans_of_words, tags


def decode_words(
    word_spans: Sequence[tuple[int, int]], tags: Sequence[str], scores: Sequence[float]
) -> list[dict[str, Any]]:
    """Entities (label, score, start, end) from predicted word tags, read leniently as a
    model's output is: an I-X that does not continue an X entity starts one (seqeval's
    default reading). The score is the mean of the entity's words' scores."""
    entities: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    current_scores: list[float] = []

    def close() -> None:
        nonlocal current
        if current is not None:
            current["score"] = sum(current_scores) / len(current_scores)
            entities.append(current)
        current = None

    for (start, end), tag, score in zip(word_spans, tags, scores, strict=True):
        if tag == OUTSIDE or not TAG_PATTERN.match(tag):
            close()
            continue
        prefix, label = tag[0], tag[2:]
        continues = current is not None and current["label"] == label and prefix in ("I", "E")
        if not continues:
            close()
            current = {"label": label, "start": start, "end": end}
            current_scores = []
        assert current is not None
        current["end"] = end
        current_scores.append(score)
        if prefix in ("E", "S"):
            close()
    close()
    return entities


def tag_set(types: Iterable[str]) -> list[str]:
    """The BIO tags a model predicts for these entity types: O, then B-/I- of each type in
    sorted order (the same ids on every rerun)."""
    out = [OUTSIDE]
    for label in sorted(set(types)):
        out += [f"B-{label}", f"I-{label}"]
    return out


def continuation(tag: str) -> str:
    """The tag of a word's later sub-words: B-X continues as I-X."""
    return f"I-{tag[2:]}" if tag.startswith("B-") else tag


def char_owners(text: str, word_spans: Sequence[tuple[int, int]]) -> list[int]:
    """For each character, the index of the word it belongs to (-1: whitespace)."""
    owner = [-1] * len(text)
    for index, (start, end) in enumerate(word_spans):
        for c in range(start, end):
            owner[c] = index
    return owner


def token_words(offsets: Sequence[Sequence[int]], owner: Sequence[int]) -> list[int | None]:
    """The word each sub-word token belongs to: the word of its first non-space character
    (None for special tokens, which cover no character, and tokens of whitespace alone)."""
    out: list[int | None] = []
    for start, end in offsets:
        word = None
        for c in range(start, min(end, len(owner))):
            if owner[c] >= 0:
                word = owner[c]
                break
        out.append(word)
    return out


def entities_from_tokens(
    text: str,
    offsets: Sequence[Sequence[int]],
    token_tags: Sequence[str],
    token_scores: Sequence[float],
) -> list[dict[str, Any]]:
    """Entities (label, score, start, end: character offsets into `text`) from a model's
    per-token tags, given the tokenizer's offset mapping (special and padding tokens at
    (0, 0)). Each word is read at its first sub-word; a word whose characters begin inside a
    sub-word of the word before (two Han characters merged into one token) continues that
    word's tag; words past the truncation are left out."""
    word_spans = words(text)
    owner = char_owners(text, word_spans)
    word_tags: list[str | None] = [None] * len(word_spans)
    word_scores = [0.0] * len(word_spans)
    for position, word in enumerate(token_words(offsets, owner)):
        if word is not None and word_tags[word] is None:
            word_tags[word] = token_tags[position]
            word_scores[word] = float(token_scores[position])
    # The last word any token reaches (the rest was truncated away).
    last = max(
        (owner[c] for start, end in offsets for c in range(start, min(end, len(owner)))),
        default=-1,
    )
    resolved: list[str] = []
    scores: list[float] = []
    for k in range(last + 1):
        tag = word_tags[k]
        if tag is None:
            previous = resolved[-1] if resolved else OUTSIDE
            tag = continuation(previous)
            word_scores[k] = scores[-1] if scores else 0.0
        resolved.append(tag)
        scores.append(word_scores[k])
    return decode_words(word_spans[: last + 1], resolved, scores)
