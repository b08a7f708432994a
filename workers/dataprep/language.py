"""Language detection for the language filter: lingua, which handles short texts and tells
Chinese, Japanese and Korean apart by their scripts (langdetect called short Chinese headlines
Korean). Its models ship in the package: nothing is downloaded.

A detector only chooses among the languages it was built for, so it is built for the wanted
languages plus the world's most used ones (text in another language is then less likely to be
taken for a wanted one); it is built once per set, lazily, on first use (a few seconds: each
language's n-gram models load then), in high-accuracy mode, which short texts need.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

# Compared against whatever is wanted: the most used languages of the web.
COMMON = ("en", "zh", "ja", "ko", "es", "fr", "de", "pt", "it", "ru", "ar", "hi")


def supported() -> frozenset[str]:
    """ISO 639-1 codes lingua knows."""
    from lingua import Language

    return frozenset(language.iso_code_639_1.name.lower() for language in Language.all())


@cache
def _detector(codes: frozenset[str]) -> Any:
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in codes]
    return LanguageDetectorBuilder.from_languages(*languages).build()


def candidates(wanted: Iterable[str]) -> frozenset[str]:
    """The languages a filter keeping `wanted` chooses among (unknown codes left out)."""
    known = supported()
    return frozenset(c for c in (*COMMON, *wanted) if c in known)


def detect(text: str, wanted: Iterable[str] = ()) -> str:
    """ISO 639-1 code of `text`'s language ("zh" for both Chinese scripts), "" if unknown
    (no letters). Deterministic: the same text always gets the same answer."""
    language = _detector(candidates(wanted)).detect_language_of(text)
    return "" if language is None else language.iso_code_639_1.name.lower()
