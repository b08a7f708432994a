"""A version's stage (none, staging, production, archived): who may move it where, the
production gate (an evaluation the server requires first), and the history of every move."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Forbidden, ValidationFailed
from app.core.settings import get_settings
from app.db.base import utcnow
from app.db.models import (
    Evaluation,
    JobStatus,
    ModelStage,
    ModelVersion,
    RegisteredModel,
    Role,
    StageChange,
    User,
)
from app.services.registry import access as registry_access
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext


# --- stages ---------------------------------------------------------------------------------
def _needs_owner(from_stage: str, to_stage: str) -> bool:
    """Production is what the company calls: only an owner puts a version in or takes it out."""
    return ModelStage.production in (from_stage, to_stage)


def parse_gate(gate: str) -> tuple[str, str, float]:
    """ "perplexity<=40" -> ("perplexity", "<=", 40.0); a bad setting is a clear error."""
    match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*", gate)
    if not match:
        raise ValidationFailed(
            f"LLMIDE_PRODUCTION_GATE {gate!r} is not of the form metric<=number or metric>=number"
        )
    return match.group(1), match.group(2), float(match.group(3))


def gate_status(*, session: Session, version: ModelVersion) -> tuple[bool, str]:
    """Whether the version may go to production under the server's gate, and why (not)."""
    gate = get_settings().production_gate
    if not gate:
        return True, "no evaluation is required for production"
    metric, op, threshold = parse_gate(gate)
    evaluations = session.scalars(
        select(Evaluation)
        .where(
            Evaluation.model_version_id == version.id,
            Evaluation.status == JobStatus.succeeded,
        )
        .order_by(Evaluation.id.desc())
    )
    seen: list[float] = []
    for evaluation in evaluations:
        value = (evaluation.metrics or {}).get(metric)
        if not isinstance(value, (int, float)):
            continue
        seen.append(float(value))
        if (value <= threshold) if op == "<=" else (value >= threshold):
            return True, f"evaluation {evaluation.id}: {metric} = {value:.4g} ({op} {threshold:g})"
    if not seen:
        return False, (
            f"promoting to production needs a finished evaluation with {metric} {op} "
            f"{threshold:g}; version {version.version} has none with {metric}: run an "
            "evaluation first"
        )
    best = min(seen) if op == "<=" else max(seen)
    return False, (
        f"promoting to production needs {metric} {op} {threshold:g}; the best evaluation of "
        f"version {version.version} has {metric} = {best:.4g}"
    )


def set_stage(
    *,
    session: Session,
    ctx: WorkspaceContext,
    version_id: int,
    stage: str,
    reason: str | None = None,
) -> ModelVersion:
    """Move a version to a stage, recording who and when.

    Editors move versions between none, staging and archived; only owners move one into or
    out of production. One production version per registered model: the previous one is
    archived, and that move is recorded too. Moving to the stage it is in changes nothing.
    """
    version = registry_access.get_version_for_editor(
        session=session, ctx=ctx, version_id=version_id
    )
    try:
        target = ModelStage(stage)
    except ValueError as exc:
        raise ValidationFailed(
            f"unknown stage {stage!r}; use one of none, staging, production, archived",
            param="stage",
        ) from exc
    # Lock the registered model: two promotions at once must not leave two in production.
    session.execute(
        select(RegisteredModel.id)
        .where(RegisteredModel.id == version.registered_model_id)
        .with_for_update()
    )
    session.refresh(version)
    if version.stage == target:
        return version
    if _needs_owner(version.stage, target) and ctx.role != Role.owner:
        raise Forbidden(
            f"only an owner of workspace '{ctx.workspace.name}' may move a version "
            f"{'into' if target == ModelStage.production else 'out of'} production "
            f"(your role is {ctx.role})"
        )
    if target == ModelStage.production:
        ok, why = gate_status(session=session, version=version)
        if not ok:
            raise Conflict(why)
        current = session.scalars(
            select(ModelVersion).where(
                ModelVersion.registered_model_id == version.registered_model_id,
                ModelVersion.stage == ModelStage.production,
                ModelVersion.id != version.id,
            )
        )
        for previous in current:
            _record(session, ctx, previous, ModelStage.archived, f"replaced by v{version.version}")
    _record(session, ctx, version, target, (reason or "").strip()[:500] or None)
    session.flush()
    return version


def _record(
    session: Session,
    ctx: WorkspaceContext,
    version: ModelVersion,
    target: ModelStage,
    reason: str | None,
) -> None:
    session.add(
        StageChange(
            workspace_id=version.workspace_id,
            model_version_id=version.id,
            from_stage=version.stage,
            to_stage=target,
            reason=reason,
            user_id=ctx.user.id,
            created_at=utcnow(),
        )
    )
    audit.record(
        session=session,
        actor=ctx,
        action="model.promote" if target == ModelStage.production else "model.stage",
        target_type="model_version",
        target_id=version.id,
        detail={"from": str(version.stage), "to": str(target), "reason": reason},
    )
    version.stage = target


def stage_history(
    *, session: Session, ctx: WorkspaceContext, version_id: int
) -> list[tuple[StageChange, str | None]]:
    """A version's moves, oldest first, with the e-mail of who made each."""
    version = registry_access.get_version_for_member(
        session=session, ctx=ctx, version_id=version_id
    )
    rows = session.execute(
        select(StageChange, User.email)
        .outerjoin(User, User.id == StageChange.user_id)
        .where(StageChange.model_version_id == version.id)
        .order_by(StageChange.id)
    )
    return [(change, email) for change, email in rows]
