"""Keeping deployments' records and the inference server in step.

The server is asked what it holds (`loaded_models`) and the records follow
(`apply_server_status`): a live deployment it lost (it restarted) is loaded again and shows
"loading", a failed load is retried once the server's back-off allows, and a redeploy whose new
version is ready switches the name over, the old version being unloaded after a drain delay.
The web runs this periodically (`reconcile_forever`), on every deployments list, and closely
while a redeploy loads (`watch_redeploy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.errors import NotFound
from app.core.settings import get_settings
from app.db.models import Deployment, DeploymentStatus, ModelVersion
from app.domain import lifecycle
from app.services.serving import inference_client
from app.services.serving.stats import stats_by_deployment
from app.services.serving.targets import ServingTarget, inference_key, target_for_version

logger = logging.getLogger(__name__)

# Strong references to background tasks (asyncio keeps only weak ones).
_TASKS: set[asyncio.Task[None]] = set()


@dataclass
class Actions:
    """What reconciling asks of the inference server: (re)loads and delayed unloads."""

    load: list[ServingTarget] = field(default_factory=list)
    unload_later: list[str] = field(default_factory=list)


async def loaded_models() -> list[dict[str, Any]] | None:
    """What the inference server holds; None while it is unreachable."""
    try:
        return await inference_client.list_loaded()
    except inference_client.InferenceUnavailable:
        return None


def _keys_in_use(session: Session) -> set[str]:
    rows = session.execute(
        select(Deployment.model_version_id, Deployment.pending_model_version_id).where(
            Deployment.status != DeploymentStatus.stopped
        )
    )
    keys = set()
    for current, pending in rows:
        keys.add(f"mv-{current}")
        if pending is not None:
            keys.add(f"mv-{pending}")
    return keys


def _queue_load(actions: Actions, version: ModelVersion, deployment: Deployment) -> str | None:
    """Ask for `version` to be (re)loaded; the reason instead if its files are gone."""
    try:
        actions.load.append(target_for_version(version, deployment))
    except NotFound as exc:
        return exc.message
    return None


def apply_server_status(
    *, session: Session, deployments: list[Deployment], loaded: list[dict[str, Any]] | None
) -> Actions:
    """Bring recorded statuses in line with what the inference server reports.

    A live deployment the server does not hold (it restarted) is loaded again and shows
    "loading"; a redeploy whose new version is ready switches over. A change is committed
    before the server is asked to act on it (`perform`), so every web process routes by it.
    """
    actions = Actions()
    if loaded is None:
        return actions
    by_key = {entry["name"]: entry for entry in loaded}
    changed = False
    for deployment in deployments:
        if deployment.status == DeploymentStatus.stopped:
            continue
        pending = deployment.pending_model_version
        if pending is not None:
            entry = by_key.get(inference_key(pending))
            if entry is None:
                _queue_load(actions, pending, deployment)
            elif entry["status"] == "ready":
                actions.unload_later.append(inference_key(deployment.model_version))
                # Settings changed while it loaded (a scale) are applied in place.
                _queue_load(actions, pending, deployment)
                deployment.model_version_id = pending.id
                deployment.model_version = pending
                deployment.pending_model_version_id = None
                deployment.pending_model_version = None
                changed = True
            elif entry["status"] == "failed":
                deployment.error = (
                    f"redeploy to {pending.serving_name} failed: {entry.get('error')}"
                )
                deployment.pending_model_version_id = None
                deployment.pending_model_version = None
                actions.unload_later.append(inference_key(pending))
                changed = True
        entry = by_key.get(inference_key(deployment.model_version))
        if entry is None:
            # The server restarted (or dropped it): load it again rather than show "failed".
            error = _queue_load(actions, deployment.model_version, deployment)
            status = DeploymentStatus.failed if error else DeploymentStatus.loading
        else:
            status = DeploymentStatus(entry["status"])
            error = entry.get("error") or (deployment.error if pending is not None else None)
            if status == DeploymentStatus.failed:
                # Not a verdict: the server retries a failed load once its back-off delay has
                # passed, so a transient failure heals without a person redeploying.
                _queue_load(actions, deployment.model_version, deployment)
        if deployment.status != status or deployment.error != error:
            lifecycle.transition(deployment, status)
            deployment.error = error
            changed = True
    if changed:
        session.commit()
    if actions.unload_later:
        in_use = _keys_in_use(session)
        actions.unload_later = [key for key in actions.unload_later if key not in in_use]
    return actions


async def perform(actions: Actions) -> None:
    """Carry out reconciling's requests; the server being away just postpones them."""
    for target in actions.load:
        with contextlib.suppress(inference_client.InferenceUnavailable):
            try:
                await inference_client.ensure_loaded(
                    target.key, target.path, retry="when_due", **target.load_options
                )
            except inference_client.InferenceError as exc:
                logger.warning("re-loading %s failed: %s", target.serving_name, exc.detail)
    for key in actions.unload_later:
        _spawn(_unload_after(key, get_settings().deployment_drain_s))


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def _unload_after(key: str, delay_s: float) -> None:
    # Requests routed to the old version just before the switch finish on it first.
    await asyncio.sleep(delay_s)
    with contextlib.suppress(
        inference_client.InferenceUnavailable, inference_client.InferenceError
    ):
        await inference_client.unload(key)


async def refresh_status(
    *, session: Session, deployments: list[Deployment]
) -> dict[int, dict[str, Any]]:
    """Ask the inference server what it holds, record it, and re-load what it lost.

    Returns each deployment's live figures (requests, latency, TTFT, tokens/s) by id.
    """
    loaded = await loaded_models()
    actions = await run_in_threadpool(
        apply_server_status, session=session, deployments=deployments, loaded=loaded
    )
    await perform(actions)
    return stats_by_deployment(deployments, loaded)


def watch_redeploy(deployment_id: int) -> None:
    """Follow a redeploy in the background until its new version is ready (switch) or failed
    (keep the old one), rather than waiting for the periodic round."""
    _spawn(_watch_redeploy(deployment_id))


async def _watch_redeploy(deployment_id: int, interval_s: float = 0.2) -> None:
    """Poll until the pending version is ready (switch) or failed (keep the old one)."""
    from app.db.session import session_scope

    while True:
        await asyncio.sleep(interval_s)
        loaded = await loaded_models()
        if loaded is None:
            continue

        def step(loaded: list[dict[str, Any]]) -> tuple[Actions, bool]:
            with session_scope() as session:
                deployment = session.get(Deployment, deployment_id)
                if deployment is None or deployment.pending_model_version_id is None:
                    return Actions(), True
                actions = apply_server_status(
                    session=session, deployments=[deployment], loaded=loaded
                )
                return actions, deployment.pending_model_version_id is None

        try:
            actions, finished = await run_in_threadpool(step, loaded)
        except Exception:  # a database hiccup: the periodic reconciler will catch up
            logger.exception("watching the redeploy of deployment %s failed", deployment_id)
            return
        await perform(actions)
        if finished:
            return


async def reconcile_all() -> None:
    """Every workspace's live deployments against the server (the web's periodic reconciler)."""
    from app.db.session import session_scope

    loaded = await loaded_models()
    if loaded is None:
        return  # nothing to compare with; the next round tries again

    def step() -> Actions:
        with session_scope() as session:
            rows = list(
                session.scalars(
                    select(Deployment).where(Deployment.status != DeploymentStatus.stopped)
                )
            )
            return apply_server_status(session=session, deployments=rows, loaded=loaded)

    await perform(await run_in_threadpool(step))


async def reconcile_forever(interval_s: float) -> None:
    """The web's periodic reconciler: one round every `interval_s`, for the process's life."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await reconcile_all()
        except Exception:  # keep reconciling: one failed round is logged, not fatal
            logger.exception("reconciling deployments failed")
