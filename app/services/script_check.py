"""Whether a base model can read a dataset's script: the share of Chinese, Japanese and Korean
characters among the letters of the first rows, read from the dataset file (no tokenizer is
loaded in the web process). The model view measures the real unknown-token rate per base."""

from __future__ import annotations

import json
import re
from itertools import islice
from pathlib import Path
from typing import Any

_CJK = re.compile(
    "[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"
)
SAMPLE_ROWS = 200
# Above this share of CJK letters, an English-only base reads little of the data.
CJK_WARN_SHARE = 0.3


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def cjk_share(path: Path) -> float:
    """Share of CJK characters among the letters of the first rows' text (0 to 1)."""
    cjk = letters = 0
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in islice(handle, SAMPLE_ROWS):
                try:
                    row = json.loads(line)
                except ValueError:
                    row = line
                for text in _strings(row):
                    letters += sum(1 for c in text if c.isalpha())
                    cjk += len(_CJK.findall(text))
    except OSError:
        return 0.0
    return cjk / letters if letters else 0.0


def script_warning(*, languages: str, base_model: str, path: Path) -> str | None:
    """A launch warning when an English-only base meets mostly-CJK data, else None."""
    if not languages.startswith("English"):
        return None
    share = cjk_share(path)
    if share < CJK_WARN_SHARE:
        return None
    return (
        f"{base_model} reads English, but {share:.0%} of this data's letters are Chinese, "
        "Japanese or Korean: it cannot read them (the packaged MiniLM turns most into unknown "
        "tokens; see the dataset's model view). Choose a scratch base, whose tokenizer is "
        "trained on your data"
    )
