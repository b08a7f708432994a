"""Harness task files: an uploaded multiple-choice or generation benchmark (JSONL, JSON, CSV or
TSV; the MMLU, C-Eval and CMMLU layouts included) read into canonical rows that the worker turns
into lm-evaluation-harness tasks, stored once per content under `harness/tasks/<sha256>.jsonl`.

Everything a file can get wrong is found here, at submission, with its line number: the worker
never meets a malformed row.

Canonical rows (one JSON object a line):
- multiple choice: `{"task", "split", "question", "choices": [...], "answer": <index>}`
- generation: `{"task", "split", "prompt", "answers": [...]}`

`task` is the row's subject (a `subject`/`task`/`category` column; one task per subject, as
C-Eval and CMMLU report), or the file's name. `split` is `test` (evaluated) or `dev` (rows
marked `dev`/`train`/`validation`/`fewshot` in a `split` column: the few-shot examples, as
C-Eval's dev files are).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import IO, Any

from app.core.errors import ValidationFailed
from app.services import artifacts

TASK_TYPES = ("multiple_choice", "generation")
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_TASKS = 100
MAX_CHOICES = 26
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Column names read for each canonical field (case-insensitive). C-Eval: id, question, A..D,
# answer, explanation. CMMLU: Question, A..D, Answer. MMLU's CSVs have no header at all:
# question, A, B, C, D, answer letter.
QUESTION = ("question", "query", "stem", "input", "prompt", "instruction")
CHOICES = ("choices", "options", "endings")
ANSWER = ("answer", "gold", "label", "answer_index", "target", "answers", "output", "completion")
SUBJECT = ("subject", "task", "category")
FEWSHOT_SPLITS = {"dev", "train", "validation", "val", "fewshot"}
_NAME_RE = re.compile(r"[^a-z0-9_]+")


@dataclass
class ParsedTasks:
    """A file read into canonical rows, with what the evaluation page shows before it runs."""

    task_type: str
    rows: list[dict[str, Any]]
    tasks: dict[str, int]  # task name -> evaluated (test) rows
    fewshot_rows: int
    sha256: str
    canonical: str


def task_name(text: str) -> str:
    """A name lm-evaluation-harness and the gate's metric names accept: [a-z0-9_]."""
    cleaned = _NAME_RE.sub("_", text.strip().lower()).strip("_")
    return (cleaned or "task")[:60]


def _records(data: bytes, filename: str) -> list[tuple[int, Any]]:
    """(line or row number, record) of a JSONL/JSON/CSV/TSV file. A CSV whose first row is not
    a header (MMLU's files) gives lists."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(f"the task file is not UTF-8 text ({exc})", param="file") from exc
    suffix = filename.lower().rsplit(".", 1)[-1] if "." in filename else ""
    if suffix in ("jsonl", "ndjson", "json"):
        stripped = text.lstrip()
        if suffix == "json" or stripped.startswith("["):
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValidationFailed(f"invalid JSON: {exc}", param="file") from exc
            if not isinstance(loaded, list):
                raise ValidationFailed("a JSON task file is an array of objects", param="file")
            return list(enumerate(loaded, start=1))
        out = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValidationFailed(
                    f"line {number}: invalid JSON ({exc.msg})", param="file"
                ) from exc
        return out
    if suffix in ("csv", "tsv"):
        rows = list(csv.reader(io.StringIO(text), delimiter="\t" if suffix == "tsv" else ","))
        rows = [r for r in rows if any(cell.strip() for cell in r)]
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        if any(h in QUESTION or h in ANSWER for h in header):
            width = len(header)
            return [
                (number, dict(zip(header, r + [""] * (width - len(r)), strict=False)))
                for number, r in enumerate(rows[1:], start=2)
            ]
        return list(enumerate(rows, start=1))  # no header: MMLU's layout
    raise ValidationFailed(
        f"a task file is .jsonl, .json, .csv or .tsv, not {filename[:80]!r}", param="file"
    )


def _pick(record: dict[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    for name in names:
        if name in lowered and lowered[name] not in (None, ""):
            return name, lowered[name]
    return None, None


def _letter_columns(record: dict[str, Any]) -> list[str]:
    """A, B, C, ... columns in order, as C-Eval and CMMLU have them (stop at the first gap)."""
    lowered = {str(k).strip().upper(): v for k, v in record.items()}
    out = []
    for letter in LETTERS:
        value = lowered.get(letter)
        if value is None or str(value).strip() == "":
            break
        out.append(str(value))
    return out


def _answer_index(answer: Any, choices: list[str], where: str) -> int:
    """An index, a letter (C-Eval's "B") or the choice's own text, as an index into choices."""
    if isinstance(answer, bool):
        raise ValidationFailed(f"{where}: the answer must be an index, a letter or a choice")
    if isinstance(answer, int):
        index = answer
    elif isinstance(answer, str) and answer.strip().isdigit():
        index = int(answer.strip())
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
        index = LETTERS.index(answer.strip().upper())
    elif isinstance(answer, str) and answer in choices:
        index = choices.index(answer)
    else:
        raise ValidationFailed(
            f"{where}: answer {str(answer)[:40]!r} is not an index, a letter or one of the choices"
        )
    if not 0 <= index < len(choices):
        raise ValidationFailed(f"{where}: answer {answer!r} is outside the {len(choices)} choices")
    return index


def _split(record: dict[str, Any]) -> str:
    _, value = _pick(record, ("split",))
    return "dev" if str(value or "").strip().lower() in FEWSHOT_SPLITS else "test"


def _multiple_choice(number: int, record: Any, default_task: str) -> dict[str, Any] | None:
    where = f"row {number}"
    if isinstance(record, list):  # MMLU: question, A, B, C, D, answer
        cells = [str(c) for c in record]
        if len(cells) < 4:
            raise ValidationFailed(
                f"{where}: a headerless row is question, choices..., answer letter "
                f"(MMLU's layout); this one has {len(cells)} cells"
            )
        question, choices, answer = cells[0], cells[1:-1], cells[-1]
        subject, split = default_task, "test"
    elif isinstance(record, dict):
        _, question = _pick(record, QUESTION)
        _, listed = _pick(record, CHOICES)
        if isinstance(listed, str):
            try:
                listed = json.loads(listed)
            except json.JSONDecodeError:
                listed = None
        choices = [str(c) for c in listed] if isinstance(listed, list) else _letter_columns(record)
        _, answer = _pick(record, ANSWER)
        _, subject_value = _pick(record, SUBJECT)
        subject = str(subject_value) if subject_value not in (None, "") else default_task
        split = _split(record)
    else:
        raise ValidationFailed(f"{where}: expected an object, got {type(record).__name__}")
    if question is None or not str(question).strip():
        raise ValidationFailed(f"{where}: no question (a column named {', '.join(QUESTION)})")
    if len(choices) < 2:
        raise ValidationFailed(
            f"{where}: a multiple-choice row needs at least two choices (a `choices` list, "
            "or columns A, B, C, ...)"
        )
    if len(choices) > MAX_CHOICES:
        raise ValidationFailed(f"{where}: at most {MAX_CHOICES} choices")
    if answer is None:
        raise ValidationFailed(f"{where}: no answer (a column named {', '.join(ANSWER[:4])})")
    return {
        "task": task_name(subject),
        "split": split,
        "question": str(question),
        "choices": choices,
        "answer": _answer_index(answer, choices, where),
    }


def _generation(number: int, record: Any, default_task: str) -> dict[str, Any]:
    where = f"row {number}"
    if not isinstance(record, dict):
        raise ValidationFailed(f"{where}: a generation row is an object with a prompt and answer")
    _, prompt = _pick(record, QUESTION)
    _, answer = _pick(record, ANSWER)
    if prompt is None or not str(prompt).strip():
        raise ValidationFailed(f"{where}: no prompt (a column named {', '.join(QUESTION)})")
    if answer is None:
        raise ValidationFailed(f"{where}: no reference answer (a column named answer or target)")
    answers = [str(a) for a in answer] if isinstance(answer, list) else [str(answer)]
    if not answers or not all(a.strip() for a in answers):
        raise ValidationFailed(f"{where}: empty reference answer")
    _, subject_value = _pick(record, SUBJECT)
    subject = str(subject_value) if subject_value not in (None, "") else default_task
    return {
        "task": task_name(subject),
        "split": _split(record),
        "prompt": str(prompt),
        "answers": answers,
    }


def detect_type(records: list[tuple[int, Any]]) -> str:
    """Multiple choice when the first rows have choices (a list or A/B columns, or are MMLU's
    headerless rows); generation otherwise."""
    for _, record in records[:20]:
        if isinstance(record, list):
            return "multiple_choice"
        if isinstance(record, dict) and (_pick(record, CHOICES)[1] or _letter_columns(record)):
            return "multiple_choice"
    return "generation"


def parse(data: bytes, filename: str, *, task_type: str | None, name: str) -> ParsedTasks:
    """Read an uploaded task file into canonical rows, or a 400 naming the first bad row."""
    if len(data) > MAX_FILE_BYTES:
        raise ValidationFailed(
            f"a task file is at most {MAX_FILE_BYTES // (1024 * 1024)} MB", param="file"
        )
    records = _records(data, filename)
    if not records:
        raise ValidationFailed("the task file has no rows", param="file")
    if task_type is not None and task_type not in TASK_TYPES:
        raise ValidationFailed(
            f"task_type must be one of {', '.join(TASK_TYPES)}", param="task_type"
        )
    kind = task_type or detect_type(records)
    default_task = task_name(name)
    convert = _multiple_choice if kind == "multiple_choice" else _generation
    rows: list[dict[str, Any]] = []
    for number, record in records:
        try:
            row = convert(number, record, default_task)
        except ValidationFailed as exc:
            raise ValidationFailed(exc.message, param="file") from exc
        if row is not None:
            rows.append(row)
    tasks = Counter(r["task"] for r in rows if r["split"] == "test")
    if not tasks:
        raise ValidationFailed(
            "no rows to evaluate: every row is marked as a few-shot (dev) row", param="file"
        )
    if len(tasks) > MAX_TASKS:
        raise ValidationFailed(f"at most {MAX_TASKS} subjects (tasks) in one file", param="file")
    canonical = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    sha = hashlib.sha256(canonical.encode()).hexdigest()
    return ParsedTasks(
        task_type=kind,
        rows=rows,
        tasks=dict(sorted(tasks.items())),
        fewshot_rows=sum(1 for r in rows if r["split"] == "dev"),
        sha256=sha,
        canonical=canonical,
    )


def store(parsed: ParsedTasks) -> str:
    """The canonical rows under their content hash (written once; the same file is one key).
    Called once every check has passed, so a refused request leaves no file behind."""
    key = f"harness/tasks/{parsed.sha256}.jsonl"
    if not artifacts.resolve(key).is_file():
        fd, tmp = artifacts.temp_file(".jsonl")
        with open(fd, "w", encoding="utf-8") as out:
            out.write(parsed.canonical)
        artifacts.commit_file(tmp, key)
    return key


def read_upload(stream: IO[bytes]) -> bytes:
    """The upload's bytes, refusing more than MAX_FILE_BYTES without reading it all."""
    data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValidationFailed(
            f"a task file is at most {MAX_FILE_BYTES // (1024 * 1024)} MB", param="file"
        )
    return data
