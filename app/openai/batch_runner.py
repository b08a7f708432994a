"""Running an OpenAI batch: each request line through the same route code as a live request
(and so the same inference server and engines), its answer into the output or error file.

The Celery task (workers/batch_tasks.py) is a thin adapter around `run`. Requests run a few at
a time so the inference server batches them; each has its own database session, because the
route code gives its connection back while the model works. Before each request the worker
checks the batch is neither cancelled nor past its expires_at; if it is, the requests not
started are not run, and are listed in the error file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from app.core.error_handlers import error_body
from app.core.errors import DomainError
from app.db.models import Batch, User
from app.db.session import session_scope
from app.openai import chat, completions, embeddings
from app.openai.schemas import ChatCompletionCreate, CompletionCreate, EmbeddingCreate
from app.services import batches
from app.services.datasets import prep as dataset_prep
from app.services.workspaces import access as workspace_access
from app.services.workspaces.access import WorkspaceContext

logger = logging.getLogger(__name__)

CONCURRENCY = 8  # requests in flight at once: enough for the server's batching, few sessions
Handler = Callable[..., Awaitable[Any]]
_ENDPOINTS: dict[str, tuple[type[BaseModel], Handler]] = {
    "/v1/chat/completions": (ChatCompletionCreate, chat.create_chat_completion),
    "/v1/completions": (CompletionCreate, completions.create_completion),
    "/v1/embeddings": (EmbeddingCreate, embeddings.create_embeddings),
}


def _validation_error(exc: ValidationError) -> tuple[int, dict[str, Any]]:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    message = f"{'.'.join(loc)}: {first.get('msg')}" if loc else str(first.get("msg"))
    return 400, error_body("/v1/", 400, message, param=loc[-1] if loc else None)


async def execute(
    *, ctx: WorkspaceContext, endpoint: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """One request line's status code and body, exactly as the live endpoint would answer."""
    schema, handler = _ENDPOINTS[endpoint]
    try:
        request = schema.model_validate(body)
    except ValidationError as exc:
        return _validation_error(exc)
    with session_scope() as session:
        # The context's rows belong to another session: the handler reads only their ids.
        try:
            result = await handler(body=request, session=session, ctx=ctx)
        except DomainError as exc:
            return exc.status_code, error_body(
                "/v1/", exc.status_code, exc.message, code=exc.code, param=exc.param
            )
        except Exception:  # one bad request must not end the batch; the log keeps the trace
            logger.exception("batch request to %s failed", endpoint)
            return 500, error_body("/v1/", 500, "the server failed this request")
    if not isinstance(result, BaseModel):  # a stream: refused when the batch was created
        return 400, error_body("/v1/", 400, "stream is not available in a batch", param="stream")
    return 200, result.model_dump(mode="json")


def _context(batch: Batch) -> WorkspaceContext:
    with session_scope() as session:
        user = session.get(User, batch.created_by_id) if batch.created_by_id else None
        if user is None:
            raise DomainError("the batch's creator no longer exists")
        ctx = workspace_access.context_for(
            session=session, user=user, workspace_ref=batch.workspace_id
        )
        session.expunge_all()  # keep the rows readable after this session closes
        return ctx


async def run(batch_id: int) -> str:
    """Claim the batch, run its requests, file the answers; returns its final status."""
    with session_scope() as session:
        waiting = session.get(Batch, batch_id)
        if waiting is not None and batches.expire_if_overdue(session=session, batch=waiting):
            return "expired"  # picked up after its window: nothing runs
        if not batches.begin(session=session, batch_id=batch_id):
            return "skipped"
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        source = batches.get_file_by_id(session=session, file_id=batch.input_file_id)
        data = batches.file_bytes(source) if source is not None else b""
        session.expunge(batch)
    try:
        ctx = _context(batch)
    except DomainError as exc:
        with session_scope() as session:
            batches.fail(session=session, batch_id=batch_id, message=exc.message)
        return "failed"
    lines, _ = batches.parse_input(data, batch.endpoint)
    answers: list[tuple[int, dict[str, Any]] | None] = [None] * len(lines)
    counts = {"completed": 0, "failed": 0}
    # Why the requests not started yet are not run: "cancelled" or "expired" (a redelivered
    # batch may already be past its window).
    stop: str | None = "expired" if batches.past_expiry(batch.expires_at) else None
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int) -> None:
        nonlocal stop
        async with gate:
            if stop is not None:
                return
            status, body = await execute(ctx=ctx, endpoint=batch.endpoint, body=lines[index].body)
            answers[index] = (status, body)
            counts["completed" if status == 200 else "failed"] += 1
            with session_scope() as session:
                halt = batches.progress(session=session, batch_id=batch_id, **counts)
                if batch.result_version_id is not None:  # the dataset page's progress bar
                    done = counts["completed"] + counts["failed"]
                    dataset_prep.progress(
                        session=session,
                        version_id=batch.result_version_id,
                        fraction=0.99 * done / len(lines),
                    )
            stop = stop or halt  # read by the next request before it starts

    await asyncio.gather(*(one(i) for i in range(len(lines))))
    output, errors = [], []
    unrun = batches.UNRUN_ERRORS[stop or "cancelled"]
    for line, answer in zip(lines, answers, strict=True):
        if answer is None:
            errors.append(batches.result_line(line.custom_id, None, None, unrun))
        elif answer[0] == 200:
            output.append(batches.result_line(line.custom_id, *answer))
        else:
            errors.append(batches.result_line(line.custom_id, *answer))
    if batch.result_version_id is not None:
        with session_scope() as session:
            batches.file_generated_version(
                session=session,
                batch_id=batch_id,
                version_id=batch.result_version_id,
                lines=lines,
                answers=answers,
            )
    with session_scope() as session:
        ended = batches.finish(
            session=session,
            batch_id=batch_id,
            output="".join(output).encode(),
            errors="".join(errors).encode(),
            expired=stop == "expired" and None in answers,
            **counts,
        )
        return str(ended.status)
