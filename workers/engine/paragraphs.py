"""Plain-text datasets: a document is a paragraph (lines up to a blank line).

Torch-free, so the dataset preparation task reads text files the way training does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def read_paragraphs(path: Path) -> Iterator[str]:
    """The blank-line-separated paragraphs of a UTF-8 text file (a BOM is dropped)."""
    paragraph: list[str] = []
    with path.open(encoding="utf-8-sig") as handle:
        for line in handle:
            if line.strip():
                paragraph.append(line.rstrip("\n"))
            elif paragraph:
                yield "\n".join(paragraph)
                paragraph = []
    if paragraph:
        yield "\n".join(paragraph)
