"""The OpenAI Batch API's records: stored files (batch input, output and error files) and
batches: create (with the input checked line by line), read, list, cancel, expiry, and what the
worker records while it runs one (workers/batch_tasks.py)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core import task_queue
from app.core.errors import InvalidTransition, NotFound, ValidationFailed
from app.core.settings import get_settings
from app.db.base import utcnow
from app.db.models import Batch, DatasetVersion, Role, StoredFile
from app.db.session import rows_changed
from app.services import artifacts
from app.services.datasets import access as dataset_access
from app.services.datasets import prep as dataset_prep
from app.services.datasets.intake import clean_filename
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext, get_in_workspace

BATCH_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
COMPLETION_WINDOW = "24h"
MAX_REQUESTS = 50_000  # OpenAI's limit per batch
MAX_LISTED_ERRORS = 100  # problems of an invalid input file listed on the batch
# Statuses in which a worker may still change the batch.
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


# --- stored files -------------------------------------------------------------------------
def store_upload(
    *,
    session: Session,
    ctx: WorkspaceContext,
    stream: IO[bytes],
    filename: str | None,
    purpose: str,
) -> StoredFile:
    """Keep an upload's bytes as they are (a batch input is checked when a batch uses it)."""
    ctx.require(Role.editor)
    name = clean_filename(filename)
    max_bytes = get_settings().max_upload_bytes
    fd, tmp = artifacts.temp_file()
    size = 0
    try:
        with os.fdopen(fd, "wb") as sink:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise ValidationFailed(
                        f"the file is larger than the upload limit of {max_bytes} bytes "
                        "(LLMIDE_MAX_UPLOAD_BYTES)",
                        param="file",
                    )
                sink.write(chunk)
        return _record(
            session=session,
            workspace_id=ctx.workspace.id,
            created_by_id=ctx.user.id,
            tmp=tmp,
            filename=name,
            purpose=purpose,
            size=size,
        )
    finally:
        tmp.unlink(missing_ok=True)


def store_bytes(
    *,
    session: Session,
    workspace_id: int,
    created_by_id: int | None,
    data: bytes,
    filename: str,
    purpose: str,
) -> StoredFile:
    """Keep bytes the server wrote (a batch's prompts, output or error file), owned like the
    batch they belong to."""
    fd, tmp = artifacts.temp_file()
    try:
        with os.fdopen(fd, "wb") as sink:
            sink.write(data)
        return _record(
            session=session,
            workspace_id=workspace_id,
            created_by_id=created_by_id,
            tmp=tmp,
            filename=filename,
            purpose=purpose,
            size=len(data),
        )
    finally:
        tmp.unlink(missing_ok=True)


def _record(
    *,
    session: Session,
    workspace_id: int,
    created_by_id: int | None,
    tmp: Any,
    filename: str,
    purpose: str,
    size: int,
) -> StoredFile:
    key = f"openai_files/{workspace_id}/{secrets.token_hex(16)}"
    artifacts.commit_file(tmp, key)
    row = StoredFile(
        workspace_id=workspace_id,
        purpose=purpose,
        filename=filename,
        size_bytes=size,
        storage_key=key,
        created_by_id=created_by_id,
    )
    session.add(row)
    session.flush()
    return row


def get_file(*, session: Session, ctx: WorkspaceContext, file_id: int) -> StoredFile:
    return get_in_workspace(session=session, ctx=ctx, model=StoredFile, row_id=file_id, what="file")


def get_file_by_id(*, session: Session, file_id: int | None) -> StoredFile | None:
    """A stored file by id for the worker (which acts for the batch, not for a request)."""
    return session.get(StoredFile, file_id) if file_id is not None else None


def page_files(
    *,
    session: Session,
    ctx: WorkspaceContext,
    purpose: str | None,
    after_id: int | None,
    limit: int,
    ascending: bool,
) -> list[StoredFile]:
    query = select(StoredFile).where(StoredFile.workspace_id == ctx.workspace.id)
    if purpose is not None:
        query = query.where(StoredFile.purpose == purpose)
    if after_id is not None:
        query = query.where(StoredFile.id > after_id if ascending else StoredFile.id < after_id)
    order = StoredFile.id.asc() if ascending else StoredFile.id.desc()
    return list(session.scalars(query.order_by(order).limit(limit)))


def delete_file(*, session: Session, ctx: WorkspaceContext, file_id: int) -> None:
    """Delete a stored file; refused while a batch that has not ended reads it."""
    ctx.require(Role.editor)
    row = get_file(session=session, ctx=ctx, file_id=file_id)
    busy = session.scalar(
        select(Batch.id).where(Batch.input_file_id == row.id, Batch.status.in_(ACTIVE)).limit(1)
    )
    if busy is not None:
        raise InvalidTransition(f"file-raw-{row.id} is the input of batch_{busy}, still running")
    key = row.storage_key
    session.delete(row)
    session.flush()
    artifacts.delete(key)


def file_bytes(row: StoredFile) -> bytes:
    return artifacts.existing(row.storage_key).read_bytes()


# --- checking an input file ---------------------------------------------------------------
@dataclass(frozen=True)
class RequestLine:
    custom_id: str
    body: dict[str, Any]


def parse_input(data: bytes, endpoint: str) -> tuple[list[RequestLine], list[dict[str, Any]]]:
    """The requests of a batch input file, and OpenAI-style errors for each bad line."""
    lines: list[RequestLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def bad(number: int, code: str, message: str, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": number})

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        bad(1, "invalid_json_line", "the file is not UTF-8 text")
        return [], errors
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError as exc:
            bad(number, "invalid_json_line", f"line {number} is not JSON: {exc}")
            continue
        if not isinstance(row, dict):
            bad(number, "invalid_request", f"line {number} is not a JSON object")
            continue
        custom_id, url, body = row.get("custom_id"), row.get("url"), row.get("body")
        unknown = sorted(set(row) - {"custom_id", "method", "url", "body"})
        if unknown:
            bad(
                number,
                "invalid_request",
                f"line {number}: unknown field {unknown[0]!r}",
                unknown[0],
            )
        elif not isinstance(custom_id, str) or not custom_id:
            bad(
                number,
                "missing_required_parameter",
                f"line {number}: custom_id is missing",
                "custom_id",
            )
        elif custom_id in seen:
            bad(
                number,
                "duplicate_custom_id",
                f"line {number}: custom_id {custom_id!r} is used on an earlier line",
                "custom_id",
            )
        elif row.get("method") != "POST":
            bad(number, "invalid_method", f"line {number}: method must be POST", "method")
        elif url != endpoint:
            bad(
                number,
                "mismatched_url",
                f"line {number}: url {url!r} differs from the batch's endpoint {endpoint!r}",
                "url",
            )
        elif not isinstance(body, dict):
            bad(number, "invalid_request", f"line {number}: body must be an object", "body")
        elif body.get("stream"):
            bad(
                number,
                "invalid_request",
                f"line {number}: stream is not available in a batch",
                "body.stream",
            )
        else:
            seen.add(custom_id)
            lines.append(RequestLine(custom_id, body))
    if not lines and not errors:
        bad(1, "empty_file", "the input file holds no requests")
    if len(lines) > MAX_REQUESTS:
        bad(
            MAX_REQUESTS + 1,
            "too_many_requests",
            f"a batch holds at most {MAX_REQUESTS} requests, this file {len(lines)}",
        )
    return lines, errors


# --- batches ------------------------------------------------------------------------------
def create(
    *,
    session: Session,
    ctx: WorkspaceContext,
    input_file_id: int,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    source_version_id: int | None = None,
    result_version_id: int | None = None,
) -> Batch:
    """Check the input file now: a bad one gives a `failed` batch listing its lines' problems
    (as OpenAI answers); a good one is queued for a `cpu` worker."""
    ctx.require(Role.editor)
    if endpoint not in ENDPOINTS:
        raise ValidationFailed(
            f"endpoint {endpoint!r} is not supported; use one of {', '.join(ENDPOINTS)}",
            param="endpoint",
        )
    if completion_window != COMPLETION_WINDOW:
        raise ValidationFailed("completion_window must be '24h'", param="completion_window")
    try:
        source = get_file(session=session, ctx=ctx, file_id=input_file_id)
    except NotFound:
        raise NotFound(f"no such file: 'file-raw-{input_file_id}'", param="input_file_id") from None
    if source.purpose != BATCH_PURPOSE:
        raise ValidationFailed(
            f"the input file's purpose is {source.purpose!r}; upload it with purpose 'batch'",
            param="input_file_id",
        )
    lines, problems = parse_input(file_bytes(source), endpoint)
    now = utcnow()
    batch = Batch(
        workspace_id=ctx.workspace.id,
        endpoint=endpoint,
        completion_window=completion_window,
        input_file_id=source.id,
        status="validating",
        total=len(lines),
        batch_metadata=metadata,
        source_version_id=source_version_id,
        result_version_id=result_version_id,
        created_by_id=ctx.user.id,
        created_at=now,
        expires_at=now + timedelta(hours=24),
    )
    if problems:
        batch.status, batch.failed_at = "failed", now
        batch.errors = problems[:MAX_LISTED_ERRORS]
        batch.total = 0
    session.add(batch)
    session.flush()
    audit.record(
        session=session,
        actor=ctx,
        action="batch.create",
        target_type="batch",
        target_id=batch.id,
        detail={"endpoint": endpoint, "requests": len(lines)},
    )
    # Committed before the task is sent (the worker must find it); a refused send fails it.
    session.commit()
    if batch.status == "validating":
        try:
            task_queue.enqueue_batch(batch.id)
        except Exception:
            batch.status, batch.failed_at = "failed", utcnow()
            batch.errors = [
                {
                    "code": "queue_unavailable",
                    "message": "the job queue is not reachable; create the batch again shortly",
                    "param": None,
                    "line": None,
                }
            ]
            session.commit()
            raise
    return batch


def get(*, session: Session, ctx: WorkspaceContext, batch_id: int) -> Batch:
    """The batch, as of now: one no worker started by its expires_at reads `expired`."""
    batch = get_in_workspace(session=session, ctx=ctx, model=Batch, row_id=batch_id, what="batch")
    expire_if_overdue(session=session, batch=batch)
    return batch


def page(
    *, session: Session, ctx: WorkspaceContext, before_id: int | None, limit: int
) -> list[Batch]:
    query = select(Batch).where(Batch.workspace_id == ctx.workspace.id)
    if before_id is not None:
        query = query.where(Batch.id < before_id)
    rows = list(session.scalars(query.order_by(Batch.id.desc()).limit(limit)))
    for batch in rows:
        expire_if_overdue(session=session, batch=batch)
    return rows


def cancel(*, session: Session, ctx: WorkspaceContext, batch_id: int) -> Batch:
    """A batch not picked up yet ends at once; a running one is `cancelling` until its worker
    stops (within one request), then `cancelled` with the answers it has."""
    ctx.require(Role.editor)
    batch = get(session=session, ctx=ctx, batch_id=batch_id)
    if batch.status not in ("validating", "in_progress"):
        raise InvalidTransition(f"batch_{batch.id} is {batch.status}; it cannot be cancelled")
    now = utcnow()
    batch.cancelling_at = now
    if batch.status == "validating":
        batch.status, batch.cancelled_at = "cancelled", now
    else:
        batch.status = "cancelling"
    audit.record(
        session=session,
        actor=ctx,
        action="batch.cancel",
        target_type="batch",
        target_id=batch.id,
        detail={},
    )
    session.flush()
    return batch


# --- expiry and result lines -------------------------------------------------------------
# The error of a request a batch never ran, by why it stopped (OpenAI's codes).
UNRUN_ERRORS: dict[str, dict[str, str]] = {
    "cancelled": {
        "code": "batch_cancelled",
        "message": "the batch was cancelled before this request ran",
    },
    "expired": {
        "code": "batch_expired",
        "message": "the batch expired (its completion window ended) before this request ran",
    },
}


def past_expiry(expires_at: datetime | None) -> bool:
    return expires_at is not None and utcnow() >= expires_at


def result_line(
    custom_id: str,
    status: int | None,
    body: dict[str, Any] | None,
    error: dict[str, str] | None = None,
) -> str:
    """One line of an output or error file: a request's answer, or why it has none."""
    response = None
    if status is not None:
        response = {"status_code": status, "request_id": secrets.token_hex(12), "body": body}
    payload = {
        "id": f"batch_req_{secrets.token_hex(12)}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }
    return json.dumps(payload, ensure_ascii=False) + "\n"


def expire_if_overdue(*, session: Session, batch: Batch) -> bool:
    """End a batch no worker has started (`validating`) once its expires_at has passed:
    `expired`, every request listed in its error file as `batch_expired`. Done where the batch
    is read or picked up, so one whose task never ran does not wait forever. A started batch
    is its worker's to end: it stops before its next request and files the answers it has.
    True if this call expired it."""
    if batch.status != "validating" or not past_expiry(batch.expires_at):
        return False
    # Guarded like the worker's claim (begin): of an expiry and a claim, exactly one wins.
    expired = rows_changed(
        session,
        update(Batch)
        .where(Batch.id == batch.id, Batch.status == "validating")
        .values(status="expired", expired_at=batch.expires_at),
    )
    session.refresh(batch)
    if expired != 1:
        return False
    source = get_file_by_id(session=session, file_id=batch.input_file_id)
    lines, _ = parse_input(file_bytes(source), batch.endpoint) if source else ([], [])
    unrun = "".join(result_line(x.custom_id, None, None, UNRUN_ERRORS["expired"]) for x in lines)
    _file_results(session=session, batch=batch, output=b"", errors=unrun.encode())
    if batch.result_version_id is not None:
        dataset_prep.fail(
            session=session,
            version_id=batch.result_version_id,
            error=f"batch_{batch.id} expired before any prompt was answered",
        )
    session.flush()
    return True


def _file_results(*, session: Session, batch: Batch, output: bytes, errors: bytes) -> None:
    """File a batch's output and error files (each only if it has lines)."""
    for data, kind in ((output, "output"), (errors, "error")):
        if not data:
            continue
        stored = store_bytes(
            session=session,
            workspace_id=batch.workspace_id,
            created_by_id=batch.created_by_id,
            data=data,
            filename=f"batch_{batch.id}_{kind}.jsonl",
            purpose=OUTPUT_PURPOSE,
        )
        if kind == "output":
            batch.output_file_id = stored.id
        else:
            batch.error_file_id = stored.id


# --- what the worker records --------------------------------------------------------------
def begin(*, session: Session, batch_id: int) -> bool:
    """Claim a batch for a worker (one guarded UPDATE); False if it is not waiting. An
    `in_progress` one is claimed again: its worker died and the task was redelivered, so it
    runs from the start (its answers were not filed)."""
    claimed = rows_changed(
        session,
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(("validating", "in_progress")))
        .values(status="in_progress", in_progress_at=utcnow()),
    )
    return claimed == 1


def progress(*, session: Session, batch_id: int, completed: int, failed: int) -> str | None:
    """Record the counts; returns why the worker must stop before its next request
    (`cancelled`: a cancel arrived; `expired`: expires_at has passed), or None."""
    session.execute(
        update(Batch).where(Batch.id == batch_id).values(completed=completed, failed=failed)
    )
    status, expires_at = session.execute(
        select(Batch.status, Batch.expires_at).where(Batch.id == batch_id)
    ).one()
    if status == "cancelling":
        return "cancelled"
    return "expired" if past_expiry(expires_at) else None


def finish(
    *,
    session: Session,
    batch_id: int,
    output: bytes,
    errors: bytes,
    completed: int,
    failed: int,
    expired: bool = False,
) -> Batch:
    """File the output and error files (each only if it has lines) and end the batch:
    `completed`; `cancelled` when a cancel arrived while it ran; `expired` when it stopped at
    expires_at with requests it did not run (the answers it has are in the output file)."""
    batch = session.get(Batch, batch_id)
    assert batch is not None
    now = utcnow()
    batch.finalizing_at = now
    _file_results(session=session, batch=batch, output=output, errors=errors)
    batch.completed, batch.failed = completed, failed
    if batch.status == "cancelling":
        batch.status, batch.cancelled_at = "cancelled", now
    elif expired:
        batch.status, batch.expired_at = "expired", now
    else:
        batch.status, batch.completed_at = "completed", now
    session.flush()
    return batch


def fail(*, session: Session, batch_id: int, message: str) -> None:
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(
            status="failed",
            failed_at=utcnow(),
            errors=[{"code": "batch_failed", "message": message, "param": None, "line": None}],
        )
    )


# --- answers for a dataset (the dataset page's "Generate answers") ------------------------
GENERATE_SCHEMAS = ("chat", "prompt_completion", "text")
GENERATE_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
MAX_GENERATE_TOKENS = 4096


def _prompt_line(
    index: int, row: dict[str, Any], schema: str, endpoint: str, model: str, max_tokens: int
) -> str:
    """The batch request for one dataset row: its messages up to the last answer, or its
    prompt (a text row's text), asked of `model`."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    if schema == "chat":
        messages = list(row.get("messages") or [])
        while messages and messages[-1].get("role") == "assistant":
            messages.pop()  # the answer the model is asked to write
        body["messages"] = messages
    else:
        prompt = str(row.get("prompt") if schema == "prompt_completion" else row.get("text"))
        if endpoint == "/v1/chat/completions":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
    line = {"custom_id": f"row-{index}", "method": "POST", "url": endpoint, "body": body}
    return json.dumps(line, ensure_ascii=False)


def create_for_dataset(
    *,
    session: Session,
    ctx: WorkspaceContext,
    dataset_id: int,
    version_id: int,
    model: str,
    endpoint: str,
    max_tokens: int,
) -> Batch:
    """Ask `model` for an answer to every prompt of a ready version, as a batch whose answers
    become a new version of the dataset (its parent: the prompts' version; shown `preparing`
    with the batch's progress until the worker files it)."""
    parent = dataset_access.get_version_for_editor(
        session=session, ctx=ctx, dataset_id=dataset_id, version_id=version_id
    )
    if parent.status != "ready":
        raise InvalidTransition(f"version {parent.version} is {parent.status}, not ready")
    if parent.schema not in GENERATE_SCHEMAS:
        raise ValidationFailed(
            f"a {parent.schema} dataset has no prompts to answer; answers are generated for "
            "chat, prompt/completion and text datasets",
            param="version_id",
        )
    if endpoint not in GENERATE_ENDPOINTS or (
        parent.schema == "chat" and endpoint != "/v1/chat/completions"
    ):
        raise ValidationFailed(
            "chat datasets are answered with /v1/chat/completions; others with either "
            "/v1/chat/completions or /v1/completions",
            param="endpoint",
        )
    if not 1 <= max_tokens <= MAX_GENERATE_TOKENS:
        raise ValidationFailed(
            f"max tokens must be from 1 to {MAX_GENERATE_TOKENS}", param="max_tokens"
        )
    model = model.strip()
    if not model:
        raise ValidationFailed("choose the model that answers", param="model")
    rows = artifacts.existing(parent.storage_key).read_text(encoding="utf-8").splitlines()
    lines = [
        _prompt_line(i, json.loads(raw), parent.schema, endpoint, model, max_tokens)
        for i, raw in enumerate(rows)
        if raw.strip()
    ]
    if not lines:
        raise ValidationFailed("the version has no rows", param="version_id")
    source = store_bytes(
        session=session,
        workspace_id=ctx.workspace.id,
        created_by_id=ctx.user.id,
        data=("\n".join(lines) + "\n").encode(),
        filename=f"dataset-{dataset_id}-v{parent.version}-prompts.jsonl",
        purpose=BATCH_PURPOSE,
    )
    answers = dataset_prep.record_generated_version(
        session=session,
        ctx=ctx,
        parent=parent,
        schema="chat" if parent.schema == "chat" else "prompt_completion",
        recipe={"generate": {"model": model, "endpoint": endpoint, "max_tokens": max_tokens}},
    )
    batch = create(
        session=session,
        ctx=ctx,
        input_file_id=source.id,
        endpoint=endpoint,
        completion_window=COMPLETION_WINDOW,
        metadata={"dataset_version": str(parent.id)},
        source_version_id=parent.id,
        result_version_id=answers.id,
    )
    if batch.status == "failed":  # a model name the input check refused, say
        dataset_prep.fail(
            session=session,
            version_id=answers.id,
            error="; ".join(e["message"] for e in batch.errors or []),
        )
    return batch


def generated_rows(
    schema: str, lines: list[RequestLine], answers: list[tuple[int, dict[str, Any]] | None]
) -> list[dict[str, Any]]:
    """The new version's rows: each prompt with the answer it got (unanswered rows left out)."""
    rows: list[dict[str, Any]] = []
    for line, answer in zip(lines, answers, strict=True):
        if answer is None or answer[0] != 200:
            continue
        choice = answer[1]["choices"][0]
        if "message" in choice:
            text = str(choice["message"].get("content") or "")
        else:
            text = str(choice.get("text") or "")
        body = line.body
        if schema == "chat":
            rows.append({"messages": [*body["messages"], {"role": "assistant", "content": text}]})
        elif "prompt" in body:
            rows.append({"prompt": body["prompt"], "completion": text})
        else:
            rows.append({"prompt": body["messages"][-1]["content"], "completion": text})
    return rows


def file_generated_version(
    *,
    session: Session,
    batch_id: int,
    version_id: int,
    lines: list[RequestLine],
    answers: list[tuple[int, dict[str, Any]] | None],
) -> None:
    """Write the answered rows as the new version's canonical file and mark it ready (or
    failed, with the reason, when no request was answered)."""
    version = session.get(DatasetVersion, version_id)
    if version is None:
        return  # deleted with its dataset meanwhile
    rows = generated_rows(version.schema, lines, answers)
    if not rows:
        dataset_prep.fail(
            session=session,
            version_id=version_id,
            error=f"no prompt was answered (batch_{batch_id}: see its error file)",
        )
        return
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    sha = hashlib.sha256(data).hexdigest()
    fd, tmp = artifacts.temp_file(".jsonl")
    try:
        with os.fdopen(fd, "wb") as sink:
            sink.write(data)
        key = dataset_prep.version_key(sha)
        artifacts.commit_file(tmp, key)
    finally:
        tmp.unlink(missing_ok=True)
    dataset_prep.complete(
        session=session,
        version_id=version_id,
        sha256=sha,
        storage_key=key,
        num_rows=len(rows),
        size_bytes=len(data),
        report={
            "generate": {
                "batch": f"batch_{batch_id}",
                "answered": len(rows),
                "unanswered": len(lines) - len(rows),
            }
        },
    )
