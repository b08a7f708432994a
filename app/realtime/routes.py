"""The run websocket: history first, then live points, log lines and status as they land."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from app.core.errors import DomainError, NotAuthenticated, NotFound
from app.db.base import MAX_ID
from app.db.models import Run
from app.db.session import session_scope
from app.realtime.credentials import Credential, CredentialWatch, still_valid
from app.realtime.hub import RunUpdateHub
from app.realtime.stream import Cursor, authenticate, next_messages
from app.services.runs import access as run_access
from app.services.workspaces import access as workspace_access

router = APIRouter()

IDLE_WAKE_S = 5.0  # re-check now and then even without a wake-up (status, ETA)
CREDENTIAL_ENDED = "signed out or token revoked"


def _bearer(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _prepare(
    websocket: WebSocket, run_id: int, after_step: int
) -> tuple[list[dict], bool, Cursor, int, Credential]:
    session_data = websocket.scope.get("session") or {}
    with session_scope() as session:
        ctx, credential = authenticate(
            session=session,
            connection=websocket,
            bearer=_bearer(websocket),
            workspace_ref=websocket.query_params.get("workspace")
            or session_data.get("workspace_id"),
        )
        run = run_access.get_for_member(session=session, ctx=ctx, run_id=run_id)
        cursor = Cursor(after_step=after_step)
        messages, done = next_messages(session=session, run=run, cursor=cursor)
        user_id = ctx.user.id
    return messages, done, cursor, user_id, credential


def _more(
    run_id: int, cursor: Cursor, user_id: int, credential: Credential
) -> tuple[list[dict], bool]:
    """What is new, while the viewer is still signed in and a member: a revoked token, a
    signed-out browser (NotAuthenticated) or a member removed from the workspace (NotFound)
    loses an open chart too, not only their next request."""
    with session_scope() as session:
        if not still_valid(session, {credential}):
            raise NotAuthenticated(CREDENTIAL_ENDED)
        run = session.get(Run, run_id)
        if run is None:
            return [{"type": "status", "status": "deleted"}], True
        role = workspace_access.role_in(
            session=session, user_id=user_id, workspace_id=run.workspace_id
        )
        if role is None:
            raise NotFound(f"run {run_id} not found")
        return next_messages(session=session, run=run, cursor=cursor)


@router.websocket("/ws/runs/{run_id}")
async def run_updates(
    websocket: WebSocket,
    run_id: int,
    after_step: Annotated[int, Query(ge=-1, le=MAX_ID)] = -1,
) -> None:
    hub: RunUpdateHub = websocket.app.state.hub
    watch: CredentialWatch = websocket.app.state.credential_watch
    try:
        messages, done, cursor, user_id, credential = await run_in_threadpool(
            _prepare, websocket, run_id, after_step
        )
    except DomainError as exc:
        # Accept, then close with 4401/4404 so the client can tell "sign in" from "no such run"
        # (closing before accepting only shows the browser a bare handshake failure).
        await websocket.accept()
        await websocket.close(code=4000 + exc.status_code, reason=exc.message[:120])
        return
    await websocket.accept()
    wake = hub.subscribe(run_id)
    ended = watch.watch(credential)
    receiver = asyncio.create_task(_drain(websocket))
    signed_out = asyncio.create_task(ended.wait())
    try:
        for message in messages:
            await websocket.send_json(message)
        while not receiver.done():
            # Wake on new data, on the client leaving, on its credential ending, or now and
            # then to refresh the ETA.
            waiter = asyncio.create_task(wake.wait())
            await asyncio.wait(
                {waiter, receiver, signed_out},
                timeout=IDLE_WAKE_S if not done else 30.0,
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()
            wake.clear()
            if receiver.done():
                break
            if signed_out.done():
                raise NotAuthenticated(CREDENTIAL_ENDED)
            messages, done = await run_in_threadpool(_more, run_id, cursor, user_id, credential)
            for message in messages:
                await websocket.send_json(message)
    except DomainError as exc:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.close(code=4000 + exc.status_code, reason=exc.message[:120])
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.unsubscribe(run_id, wake)
        watch.unwatch(credential, ended)
        receiver.cancel()
        signed_out.cancel()


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) client messages so a disconnect is noticed promptly."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()
