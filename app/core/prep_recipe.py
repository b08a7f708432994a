"""The dataset preparation recipe: ordered cleaning steps, a split and optional tokenization.

Pure pydantic, shared by the web (which validates a request before it queues anything) and the
worker library `workers/dataprep` (which runs it): the web never imports the workers, so the
one definition lives here. A recipe is stored verbatim in the new version's `recipe` column.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import datacontract as contract

SCHEMAS = contract.SCHEMAS
SPLITS = contract.SPLITS
# Tokenizers a recipe can name: trained on the data, or the two packaged models' tokenizers.
TOKENIZERS = ("scratch", "smollm2", "minilm")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StripHtml(_Strict):
    """Remove tags, comments, script/style bodies; decode entities; block tags end a line."""

    step: Literal["strip_html"]


class Nfkc(_Strict):
    """Unicode NFKC: full-width letters and digits to ASCII, compatibility forms folded."""

    step: Literal["nfkc"]


class Whitespace(_Strict):
    """Collapse runs of spaces/tabs, drop zero-width characters, trim lines and the text."""

    step: Literal["whitespace"]
    keep_newlines: bool = True


class LengthFilter(_Strict):
    """Drop rows whose text fields together are shorter or longer than the bounds."""

    step: Literal["length_filter"]
    unit: Literal["chars", "tokens"] = "chars"
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=1)
    # Only for unit="tokens": whose tokens to count (the scratch tokenizer does not exist yet).
    tokenizer: Literal["smollm2", "minilm"] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> LengthFilter:
        if self.min is None and self.max is None:
            raise ValueError("length_filter needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"length_filter min ({self.min}) is above max ({self.max})")
        if self.unit == "tokens" and self.tokenizer is None:
            raise ValueError('length_filter with unit "tokens" needs a tokenizer (smollm2, minilm)')
        if self.unit == "chars" and self.tokenizer is not None:
            raise ValueError('length_filter takes a tokenizer only with unit "tokens"')
        return self


class ExactDedup(_Strict):
    """Keep the first of rows whose text fields are identical (128-bit hash per row kept)."""

    step: Literal["exact_dedup"]


class NearDedup(_Strict):
    """Keep the first of rows whose estimated Jaccard similarity (MinHash LSH over character
    n-grams, so Chinese without spaces works) reaches the threshold."""

    step: Literal["near_dedup"]
    threshold: float = Field(default=0.8, gt=0.0, lt=1.0)
    num_perm: int = Field(default=128, ge=16, le=512)
    ngram: int = Field(default=5, ge=1, le=20)
    seed: int = 1


class PiiMask(_Strict):
    """Replace e-mail addresses, phone numbers and URLs by placeholders."""

    step: Literal["pii_mask"]
    emails: bool = True
    phones: bool = True
    urls: bool = True

    @model_validator(mode="after")
    def _something(self) -> PiiMask:
        if not (self.emails or self.phones or self.urls):
            raise ValueError("pii_mask needs at least one of emails, phones, urls")
        return self


class LanguageFilter(_Strict):
    """Keep rows detected (lingua) as one of the languages (ISO 639-1: en, zh, fr, ...)."""

    step: Literal["language_filter"]
    languages: list[Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]] = Field(min_length=1)

    @field_validator("languages")
    @classmethod
    def _known(cls, languages: list[str]) -> list[str]:
        from lingua import Language  # its models load only when a detector is built

        known = {language.iso_code_639_1.name.lower() for language in Language.all()}
        unknown = [code for code in languages if code not in known]
        if unknown:
            raise ValueError(
                f"unknown language code {', '.join(unknown)}: the filter tells apart 75 "
                "languages by their ISO 639-1 codes (en, zh, ja, ko, fr, ...)"
            )
        return languages


Step = Annotated[
    StripHtml
    | Nfkc
    | Whitespace
    | LengthFilter
    | ExactDedup
    | NearDedup
    | PiiMask
    | LanguageFilter,
    Field(discriminator="step"),
]
STEP_NAMES = (
    "strip_html",
    "nfkc",
    "whitespace",
    "length_filter",
    "exact_dedup",
    "near_dedup",
    "pii_mask",
    "language_filter",
)


class SplitSettings(_Strict):
    """Train/validation/test: a seeded random split (stratified by label for classification),
    or the value of a row key naming the split."""

    method: Literal["random", "column"] = "random"
    validation: float = Field(default=0.1, ge=0.0, lt=1.0)
    test: float = Field(default=0.0, ge=0.0, lt=1.0)
    seed: int = 0
    stratify: bool = True  # only classification rows have a label to stratify by
    column: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _shares(self) -> SplitSettings:
        if self.method == "random" and self.validation + self.test >= 1.0:
            raise ValueError("validation + test must leave a share for train (sum below 1)")
        if self.method == "column" and not self.column:
            raise ValueError('a split by column needs "column"')
        return self


class TokenizeSettings(_Strict):
    """Tokenize the prepared version (cached by version hash, tokenizer and these settings)."""

    tokenizer: Literal["scratch", "smollm2", "minilm"] = "scratch"
    vocab_size: int = Field(default=4096, ge=300, le=65536)  # scratch only
    max_length: int = Field(default=512, ge=8, le=32768)
    packing: bool = True  # causal LM: documents joined with EOS and cut into full sequences
    chat_template: bool = True  # render rows through the tokenizer's chat template


class Recipe(_Strict):
    steps: list[Step] = Field(default_factory=list, max_length=32)
    split: SplitSettings | None = None
    tokenize: TokenizeSettings | None = None


def recipe_errors(exc: Exception) -> str:
    """One readable line per problem of a pydantic ValidationError ("steps.1.threshold: ...")."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for error in errors():
        where = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


class ModelViewSettings(_Strict):
    """How to show rows as a model sees them: whose tokenizer, how long, which template."""

    tokenizer: Literal["scratch", "smollm2", "minilm"] = "scratch"
    vocab_size: int = Field(default=4096, ge=300, le=65536)  # scratch only
    max_length: int = Field(default=512, ge=8, le=32768)
    chat_template: bool = True
    sample_rows: int = Field(default=500, ge=1, le=5000)  # counted for warnings and rates
    detail_rows: int = Field(default=8, ge=1, le=50)  # shown token by token
