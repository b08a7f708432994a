"""Streaming validation of uploaded training files: one pass, bounded memory, numbered errors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from app.core.errors import PayloadTooLarge, ValidationFailed

CHAT_ROLES = {"system", "user", "assistant", "tool", "developer"}
PREVIEW_ROWS = 5


@dataclass
class ValidationReport:
    format: str
    num_rows: int = 0
    size_bytes: int = 0
    sha256: str = ""
    preview: list[dict[str, Any]] = field(default_factory=list)


def _detect_format(filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".txt"):
        return "txt"
    if lower.endswith((".jsonl", ".json")):
        return "jsonl"
    raise ValidationFailed(
        f'unsupported file type {filename!r}: upload a .jsonl file of {{"text": ...}} or '
        '{"messages": [...]} rows, or a plain .txt file',
        param="file",
    )


def _check_chat(row: dict[str, Any], line_no: int) -> None:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValidationFailed(f'line {line_no}: "messages" must be a non-empty list')
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise ValidationFailed(f"line {line_no}: message {index} must be an object")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise ValidationFailed(
                f"line {line_no}: message {index} has role {role!r}; expected one of "
                + ", ".join(sorted(CHAT_ROLES))
            )
        content = message.get("content")
        if role != "assistant" and not isinstance(content, str):
            raise ValidationFailed(f'line {line_no}: message {index} needs a string "content"')
        if role == "assistant" and content is not None and not isinstance(content, str):
            raise ValidationFailed(f'line {line_no}: message {index} "content" must be a string')
    if not any(m.get("role") == "assistant" for m in messages):
        raise ValidationFailed(
            f"line {line_no}: a chat example needs at least one assistant message"
        )


def _row_kind(row: Any, line_no: int) -> str:
    if not isinstance(row, dict):
        raise ValidationFailed(
            f"line {line_no}: each line must be a JSON object, not {type(row).__name__}"
        )
    if "messages" in row:
        _check_chat(row, line_no)
        return "chat"
    if "text" in row:
        if not isinstance(row["text"], str):
            raise ValidationFailed(f'line {line_no}: "text" must be a string')
        if not row["text"].strip():
            raise ValidationFailed(f'line {line_no}: "text" is empty')
        return "text"
    raise ValidationFailed(f'line {line_no}: missing field: each row needs "text" or "messages"')


def _lines(
    stream: IO[bytes], max_bytes: int, max_line_bytes: int, digest: Any
) -> Iterator[tuple[int, bytes]]:
    total = 0
    line_no = 0
    while True:
        raw = stream.readline(max_line_bytes + 1)
        if not raw:
            return
        line_no += 1
        total += len(raw)
        if total > max_bytes:
            raise PayloadTooLarge(
                f"the file is larger than the upload limit of {max_bytes // (1024 * 1024)} MB"
            )
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            raise ValidationFailed(
                f"line {line_no}: longer than the limit of {max_line_bytes} bytes per line"
            )
        digest.update(raw)
        yield line_no, raw


def validate_stream(
    stream: IO[bytes],
    *,
    filename: str,
    sink: IO[bytes],
    max_bytes: int,
    max_line_bytes: int,
) -> ValidationReport:
    """Validate `stream` line by line while copying it to `sink`; raise on the first bad line.

    The caller stores `sink` only if this returns, so a bad file leaves nothing behind.
    """
    kind = _detect_format(filename)
    digest = hashlib.sha256()
    report = ValidationReport(format="txt" if kind == "txt" else "")
    for line_no, raw in _lines(stream, max_bytes, max_line_bytes, digest):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationFailed(
                f"line {line_no}: not valid UTF-8 (byte {exc.start + 1} of the line)"
            ) from None
        sink.write(raw)
        report.size_bytes += len(raw)
        if kind == "txt":
            if text.strip():
                report.num_rows += 1
                if len(report.preview) < PREVIEW_ROWS:
                    report.preview.append({"text": text.rstrip("\n")})
            continue
        if not text.strip():
            continue  # blank lines between JSON rows are harmless
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(
                f"line {line_no}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        row_kind = _row_kind(row, line_no)
        if report.format and row_kind != report.format:
            raise ValidationFailed(
                f"line {line_no}: a {row_kind} row in a file whose first rows are "
                f"{report.format} rows; use one format per file"
            )
        report.format = row_kind
        report.num_rows += 1
        if len(report.preview) < PREVIEW_ROWS:
            report.preview.append(row)
    if report.num_rows == 0:
        raise ValidationFailed("the file is empty: it has no rows to train on")
    report.sha256 = digest.hexdigest()
    return report
