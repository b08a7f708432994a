"""Text transforms of the cleaning steps: pure str -> str functions, Unicode-correct.

No function here assumes spaces separate words: Chinese and other scripts pass through every
transform unchanged except where the transform is about them (NFKC folds full-width forms).
"""

from __future__ import annotations

import html
import re
import unicodedata

# --- strip_html -------------------------------------------------------------------------------
# Script/style bodies and comments are content nobody reads; drop them with their tags.
_INVISIBLE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>|<!--.*?-->", re.S | re.I)
# A line break or the end of a block element ends a line of text.
_LINE_BREAK = re.compile(
    r"<br\s*/?>|</(?:p|div|li|ul|ol|h[1-6]|tr|table|blockquote|pre|section|article)\s*>", re.I
)
# Only "<" followed by a letter, "/" or "!" opens a tag: "1 < 2 > 0" is text, not markup.
_TAG = re.compile(r"</?[A-Za-z!][^<>]*>")


def strip_html(text: str) -> str:
    """Markup removed, entities decoded; block ends and <br> become newlines."""
    if "<" not in text and "&" not in text:
        return text
    text = _INVISIBLE.sub("", text)
    text = _LINE_BREAK.sub("\n", text)
    text = _TAG.sub("", text)
    return html.unescape(text)


# --- nfkc -------------------------------------------------------------------------------------
def nfkc(text: str) -> str:
    """NFKC normal form (ＡＢＣ１２３ -> ABC123, ﬁ -> fi, ① -> 1)."""
    if text.isascii() or unicodedata.is_normalized("NFKC", text):
        return text
    return unicodedata.normalize("NFKC", text)


# --- whitespace -------------------------------------------------------------------------------
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
# Any whitespace but a newline: spaces, tabs, no-break and ideographic (U+3000) spaces.
_HSPACE = re.compile(r"[^\S\n]+")
_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")
_ANY_SPACE = re.compile(r"\s+")


def clean_whitespace(text: str, *, keep_newlines: bool = True) -> str:
    """Runs of spaces/tabs become one space, zero-width characters go, lines are trimmed, at
    most one blank line separates paragraphs, and the text is stripped."""
    text = _ZERO_WIDTH.sub("", text)
    if not keep_newlines:
        return _ANY_SPACE.sub(" ", text).strip()
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _HSPACE.sub(" ", text)
    text = _AROUND_NEWLINE.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


# --- pii_mask ---------------------------------------------------------------------------------
EMAIL_TOKEN = "[EMAIL]"
PHONE_TOKEN = "[PHONE]"
URL_TOKEN = "[URL]"

# A URL stops at whitespace, quotes, angle brackets and CJK punctuation (Chinese text often
# follows a URL with no space); a trailing ASCII full stop or comma is punctuation, not URL.
_URL = re.compile(
    r"(?:https?://|ftp://|www\.)[^\s<>\"'\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\u4e00-\u9fff]+"
    r"(?<![.,;:!?)\]])",
    re.I,
)
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# A phone number: optional +country code, optional (area code), digit groups separated by
# single spaces, dots or dashes. ASCII look-arounds (not \b) so "电话13800138000" matches.
_PHONE = re.compile(
    r"(?<![A-Za-z0-9+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}"
    r"(?![A-Za-z0-9])"
)
_MIN_PHONE_DIGITS, _MAX_PHONE_DIGITS = 7, 15


def _phone(match: re.Match[str]) -> str:
    found = match.group(0)
    digits = sum(c.isdigit() for c in found)
    if not _MIN_PHONE_DIGITS <= digits <= _MAX_PHONE_DIGITS:
        return found
    # Dates and version-like numbers (2024-01-15, 1.2.3.4) are not phone numbers.
    if re.fullmatch(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}", found):
        return found
    return PHONE_TOKEN


def mask_pii(text: str, *, emails: bool = True, phones: bool = True, urls: bool = True) -> str:
    """URLs first (they may contain digits and @), then e-mails, then phone numbers."""
    if urls:
        text = _URL.sub(URL_TOKEN, text)
    if emails and "@" in text:
        text = _EMAIL.sub(EMAIL_TOKEN, text)
    if phones:
        text = _PHONE.sub(_phone, text)
    return text
