"""Hyperparameter sweeps: child runs over a search space, sampled, pruned, ranked.

A sweep is a row plus its child runs (runs.sweep_id). `advance` is the whole controller and
is stateless: it reads the trials back from the database, stops trials the median pruner
condemns, launches new trials up to the sweep's parallelism and budget, and closes the sweep
when none is left. It runs after each child run finishes (in the worker,
`scheduler.on_run_finished`), every few seconds on each worker's dispatcher thread and when
the sweep is created; a unique (sweep_id, sweep_trial) index makes a second caller racing
for the same trial fail instead of launching it twice. Child runs go through the normal
queue (fair share, priorities, quotas). See docs/sweeps.md.
"""

from __future__ import annotations

import math
import random
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.errors import InvalidTransition, ValidationFailed
from app.db.base import utcnow
from app.db.models import (
    Checkpoint,
    Membership,
    MetricPoint,
    Role,
    Run,
    RunEvent,
    RunStatus,
    Sweep,
    SweepStatus,
    User,
    Workspace,
)
from app.domain import lifecycle
from app.services.datasets import access as dataset_access
from app.services.datasets import versions as dataset_versions
from app.services.registry import base_models, registration
from app.services.runs import queue as run_queue
from app.services.runs import service as runs
from app.services.runs.config import RunConfig
from app.services.runs.queue import QuotaExceeded
from app.services.workspaces import audit
from app.services.workspaces.access import WorkspaceContext, get_in_workspace

METHODS = ("grid", "random", "tpe")
MAX_TRIALS = 200
MAX_PARALLELISM = 32
# Hyperparameters a sweep may vary, with their kind.
SEARCHABLE: dict[str, str] = {
    "learning_rate": "float",
    "warmup_ratio": "float",
    "weight_decay": "float",
    "max_grad_norm": "float",
    "lora_dropout": "float",
    "epochs": "float",
    "batch_size": "int",
    "gradient_accumulation_steps": "int",
    "max_steps": "int",
    "warmup_steps": "int",
    "seed": "int",
    "block_size": "int",
    "lora_r": "int",
    "lora_alpha": "int",
    "lr_scheduler": "choice",
    "method": "choice",
}
# The median pruner waits for this many finished trials before it stops anything.
PRUNE_STARTUP_TRIALS = 2


# --- the search space ---------------------------------------------------------------------


def _check_space(space: dict[str, Any], method: str, base: dict[str, Any]) -> None:
    """Refuse a search space naming unknown or unsearchable fields, or values the run config
    would refuse: every grid point / bound is checked now, not when trial 7 fails."""
    if not isinstance(space, dict) or not space:
        raise ValidationFailed("search_space must name at least one hyperparameter")
    if len(space) > 10:
        raise ValidationFailed("search_space may vary at most 10 hyperparameters")
    for name, spec in space.items():
        kind = SEARCHABLE.get(name)
        if kind is None:
            raise ValidationFailed(
                f"'{name}' cannot be searched; searchable: {', '.join(sorted(SEARCHABLE))}",
                param="search_space",
            )
        if not isinstance(spec, dict):
            raise ValidationFailed(f"search_space.{name} must be an object", param="search_space")
        if "values" in spec:
            values = spec["values"]
            if not isinstance(values, list) or not 1 <= len(values) <= 100:
                raise ValidationFailed(
                    f"search_space.{name}.values must be a list of 1 to 100 values",
                    param="search_space",
                )
            candidates = values
        elif kind == "choice":
            raise ValidationFailed(f"search_space.{name} needs values", param="search_space")
        else:
            if method == "grid":
                raise ValidationFailed(
                    f"a grid sweep needs a list of values for {name} (search_space.{name}.values)",
                    param="search_space",
                )
            low, high = spec.get("low"), spec.get("high")
            if (
                not isinstance(low, int | float)
                or not isinstance(high, int | float)
                or isinstance(low, bool)
                or isinstance(high, bool)
            ):
                raise ValidationFailed(
                    f"search_space.{name} needs numeric low and high (or values)",
                    param="search_space",
                )
            if low > high:
                raise ValidationFailed(
                    f"search_space.{name}: low must not exceed high", param="search_space"
                )
            if spec.get("log") and low <= 0:
                raise ValidationFailed(
                    f"search_space.{name}: a log scale needs low > 0", param="search_space"
                )
            candidates = [low, high]
        for value in candidates:
            try:
                RunConfig(**{**base, name: value})
            except Exception as exc:  # pydantic's ValidationError: say which value and why
                raise ValidationFailed(
                    f"search_space.{name}: {value!r} is not a valid {name} "
                    f"({str(exc).splitlines()[-1].strip()})",
                    param="search_space",
                ) from exc


def grid_size(space: dict[str, Any]) -> int:
    return math.prod(len(spec["values"]) for spec in space.values())


def grid_point(space: dict[str, Any], number: int) -> dict[str, Any] | None:
    """The grid's `number`-th combination (last name varying fastest), None past the end.
    Computed, not listed: a 10-parameter grid has up to 100^10 points."""
    if number >= grid_size(space):
        return None
    point: dict[str, Any] = {}
    for name in sorted(space, reverse=True):
        values = space[name]["values"]
        number, index = divmod(number, len(values))
        point[name] = values[index]
    return dict(sorted(point.items()))


def _random_params(space: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    params: dict[str, Any] = {}
    for name in sorted(space):
        spec = space[name]
        if "values" in spec:
            params[name] = rng.choice(spec["values"])
        elif SEARCHABLE[name] == "int":
            low, high = int(spec["low"]), int(spec["high"])
            if spec.get("log"):
                params[name] = int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))
            else:
                params[name] = rng.randint(low, high)
        elif spec.get("log"):
            params[name] = math.exp(rng.uniform(math.log(spec["low"]), math.log(spec["high"])))
        else:
            params[name] = rng.uniform(float(spec["low"]), float(spec["high"]))
    return params


def _distributions(space: dict[str, Any]) -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    dists: dict[str, Any] = {}
    for name, spec in space.items():
        if "values" in spec:
            dists[name] = CategoricalDistribution(spec["values"])
        elif SEARCHABLE[name] == "int":
            dists[name] = IntDistribution(
                int(spec["low"]), int(spec["high"]), log=bool(spec.get("log"))
            )
        else:
            dists[name] = FloatDistribution(
                float(spec["low"]), float(spec["high"]), log=bool(spec.get("log"))
            )
    return dists


Curves = dict[int, dict[int, float]]  # run id -> step -> the sweep metric's value


def _study(
    sweep: Sweep,
    trials: list[Run],
    values: dict[int, float | None],
    sampler: Any,
    curves: Curves,
) -> Any:
    """An in-memory Optuna study rebuilt from the trials in the database: no Optuna storage,
    nothing to keep in step with the runs table."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if sweep.direction == "maximize" else "minimize",
        sampler=sampler,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS, n_warmup_steps=0),
    )
    dists = _distributions(sweep.search_space)
    for trial in trials:
        value = values.get(trial.id)
        params = trial.sweep_params or {}
        if set(params) != set(dists):
            continue
        intermediate = curves.get(trial.id, {})
        if value is not None:
            state = TrialState.COMPLETE
        elif trial.sweep_pruned:
            state = TrialState.PRUNED
        elif RunStatus(trial.status).is_terminal:
            state = TrialState.FAIL
        else:
            continue
        study.add_trial(
            create_trial(
                params=params,
                distributions=dists,
                value=value,
                intermediate_values=intermediate,
                state=state,
            )
        )
    return study


def _load_curves(session: Session, sweep: Sweep, trials: list[Run]) -> Curves:
    curves: Curves = {}
    if not trials:
        return curves
    rows = session.execute(
        select(MetricPoint.run_id, MetricPoint.step, MetricPoint.value).where(
            MetricPoint.run_id.in_([t.id for t in trials]), MetricPoint.name == sweep.metric
        )
    )
    for run_id, step, value in rows:
        curves.setdefault(run_id, {})[step] = value
    return curves


def objective(session: Session, sweep: Sweep, run: Run) -> float | None:
    """A finished trial's score: the last value of the sweep's metric (its final evaluation)."""
    if run.status != RunStatus.succeeded:
        return None
    value = session.scalar(
        select(MetricPoint.value)
        .where(MetricPoint.run_id == run.id, MetricPoint.name == sweep.metric)
        .order_by(MetricPoint.step.desc())
        .limit(1)
    )
    return float(value) if value is not None else None


def _next_params(
    sweep: Sweep, trials: list[Run], values: dict[int, float | None], curves: Curves
) -> Any:
    number = len(trials)
    if sweep.method == "grid":
        return grid_point(sweep.search_space, number)
    if sweep.method == "random":
        return _random_params(sweep.search_space, sweep.seed * 100_003 + number)
    import optuna

    sampler = optuna.samplers.TPESampler(
        seed=sweep.seed * 100_003 + number, n_startup_trials=min(4, sweep.max_trials)
    )
    study = _study(sweep, trials, values, sampler, curves)
    trial = study.ask(_distributions(sweep.search_space))
    return dict(trial.params)


def budget(sweep: Sweep) -> int:
    if sweep.method == "grid":
        return min(sweep.max_trials, grid_size(sweep.search_space))
    return sweep.max_trials


# --- creating, reading, cancelling ----------------------------------------------------------


def create_sweep(
    *,
    session: Session,
    ctx: WorkspaceContext,
    dataset_id: int,
    search_space: dict[str, Any],
    method: str = "grid",
    config: RunConfig | None = None,
    base_model: str = "scratch-tiny",
    name: str | None = None,
    metric: str = "eval_loss",
    direction: str = "minimize",
    max_trials: int = 10,
    parallelism: int = 1,
    prune: bool = True,
    seed: int = 0,
) -> Sweep:
    """Record a sweep and launch its first trials (they wait in the queue like any run)."""
    ctx.require(Role.editor)
    if method not in METHODS:
        raise ValidationFailed(f"method must be one of {', '.join(METHODS)}", param="method")
    if direction not in ("minimize", "maximize"):
        raise ValidationFailed("direction must be minimize or maximize", param="direction")
    if not 1 <= max_trials <= MAX_TRIALS:
        raise ValidationFailed(f"max_trials must be 1 to {MAX_TRIALS}", param="max_trials")
    if not 1 <= parallelism <= MAX_PARALLELISM:
        raise ValidationFailed(f"parallelism must be 1 to {MAX_PARALLELISM}", param="parallelism")
    config = config or RunConfig()
    base = config.model_dump()
    _check_space(search_space, method, base)
    model = base_models.require_known(base_model)
    dataset = dataset_access.get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    version = dataset_versions.version_for_run(
        session=session, ctx=ctx, dataset=dataset, version_id=None
    )
    from app.services.runs.service import check_fit

    check_fit(model=model, schema=version.schema, config=config)
    run_queue.check_launch_quota(session=session, workspace=ctx.workspace)
    sweep = Sweep(
        workspace_id=ctx.workspace.id,
        name=(name or "").strip()[:255] or f"{method} sweep on {dataset.name}",
        dataset_id=dataset.id,
        base_model=base_model,
        base_config=base,
        search_space=search_space,
        method=method,
        metric=metric,
        direction=direction,
        max_trials=max_trials,
        parallelism=parallelism,
        prune=prune,
        seed=seed,
        created_by_id=ctx.user.id,
    )
    session.add(sweep)
    session.flush()
    event = audit.record(
        session=session,
        actor=ctx,
        action="sweep.create",
        target_type="sweep",
        target_id=sweep.id,
        detail={"name": sweep.name, "method": method, "max_trials": max_trials},
    )
    session.commit()
    try:
        advance(session=session, sweep_id=sweep.id)
    except Exception:
        # The broker refused the first trial: nothing was launched, nothing stays.
        session.rollback()
        for run in session.scalars(select(Run).where(Run.sweep_id == sweep.id)):
            session.delete(run)
        session.delete(event)
        session.delete(sweep)
        session.commit()
        raise
    session.refresh(sweep)
    return sweep


def get_for_member(*, session: Session, ctx: WorkspaceContext, sweep_id: int) -> Sweep:
    return get_in_workspace(session=session, ctx=ctx, model=Sweep, row_id=sweep_id, what="sweep")


def list_for_workspace(
    *, session: Session, ctx: WorkspaceContext, limit: int = 50, offset: int = 0
) -> list[Sweep]:
    return list(
        session.scalars(
            select(Sweep)
            .where(Sweep.workspace_id == ctx.workspace.id)
            .order_by(Sweep.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )


def trials(*, session: Session, sweep_id: int) -> list[Run]:
    return list(
        session.scalars(select(Run).where(Run.sweep_id == sweep_id).order_by(Run.sweep_trial))
    )


def cancel(*, session: Session, ctx: WorkspaceContext, sweep_id: int) -> Sweep:
    """Stop the sweep: no new trials; waiting trials end, running ones stop within a step."""
    ctx.require(Role.editor)
    sweep = get_for_member(session=session, ctx=ctx, sweep_id=sweep_id)
    if sweep.status != SweepStatus.running:
        raise InvalidTransition(f"sweep {sweep.id} is already {sweep.status}")
    lifecycle.transition(sweep, SweepStatus.cancelled)
    sweep.finished_at = utcnow()
    audit.record(
        session=session,
        actor=ctx,
        action="sweep.cancel",
        target_type="sweep",
        target_id=sweep.id,
        detail={"name": sweep.name},
    )
    session.commit()
    for trial in trials(session=session, sweep_id=sweep.id):
        if not RunStatus(trial.status).is_terminal and not trial.cancel_requested:
            runs.cancel(session=session, ctx=ctx, run_id=trial.id)
    session.refresh(sweep)
    return sweep


# --- the controller ---------------------------------------------------------------------------


def _owner_context(session: Session, sweep: Sweep) -> WorkspaceContext | None:
    """Trials launch on behalf of the sweep's creator (audited as theirs), as long as they
    may still launch runs in the workspace; None once they left it or became a viewer."""
    user = session.get(User, sweep.created_by_id) if sweep.created_by_id else None
    workspace = session.get(Workspace, sweep.workspace_id)
    if user is None or workspace is None or not user.is_active:
        return None
    role = session.scalar(
        select(Membership.role).where(
            Membership.user_id == user.id, Membership.workspace_id == workspace.id
        )
    )
    if role not in (Role.editor, Role.owner):
        return None
    return WorkspaceContext(user=user, workspace=workspace, role=Role(role))


def _prune(
    session: Session,
    sweep: Sweep,
    all_trials: list[Run],
    values: dict[int, float | None],
    curves: Curves,
) -> None:
    """Optuna's MedianPruner on each running trial's latest evaluation: worse than the median
    of the finished trials at the same step, it is stopped (cancelled, marked pruned)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    running = [
        t
        for t in all_trials
        if t.status == RunStatus.running and curves.get(t.id) and not t.cancel_requested
    ]
    if not running or sum(v is not None for v in values.values()) < PRUNE_STARTUP_TRIALS:
        return
    study = _study(sweep, all_trials, values, optuna.samplers.RandomSampler(seed=0), curves)
    dists = _distributions(sweep.search_space)
    for trial in running:
        study.add_trial(
            create_trial(
                params=trial.sweep_params or {},
                distributions=dists,
                intermediate_values=curves[trial.id],
                state=TrialState.RUNNING,
            )
        )
        frozen = study.get_trials(deepcopy=False)[-1]
        if study.pruner.prune(study, frozen):
            step = max(curves[trial.id])
            trial.cancel_requested = True
            trial.sweep_pruned = True
            session.add(
                RunEvent(
                    run_id=trial.id,
                    level="warning",
                    message=f"pruned by sweep {sweep.id}: {sweep.metric} "
                    f"{curves[trial.id][step]:.4g} at step {step} is worse than the median "
                    "of the finished trials",
                )
            )
    session.commit()


def advance(*, session: Session, sweep_id: int) -> None:
    """One controller round for a sweep (see the module docstring)."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or sweep.status != SweepStatus.running:
        return
    all_trials = trials(session=session, sweep_id=sweep.id)
    curves = _load_curves(session, sweep, all_trials)
    values = {t.id: objective(session, sweep, t) for t in all_trials}
    if sweep.prune:
        _prune(session, sweep, all_trials, values, curves)
    active = [t for t in all_trials if not RunStatus(t.status).is_terminal]
    ctx = _owner_context(session, sweep)
    limit = budget(sweep)
    stopped = sweep.error is not None  # a lasting refusal ended the launching
    while (
        ctx is not None
        and not stopped
        and len(active) < sweep.parallelism
        and len(all_trials) < limit
    ):
        params = _next_params(sweep, all_trials, values, curves)
        if params is None:
            break
        try:
            run = _launch_trial(session, ctx, sweep, len(all_trials), params)
        except (QuotaExceeded, ValidationFailed, InvalidTransition) as exc:
            # Lasting refusals (the month's GPU-hours used up, a base model or dataset gone):
            # no more trials, the sweep ends when the running ones do and says why. A broker
            # outage is not caught: the next round retries.
            session.rollback()
            sweep.error = f"no more trials: trial {len(all_trials)} was refused: {exc.message}"
            stopped = True
            break
        all_trials.append(run)
        active.append(run)
    _update_best(sweep, all_trials, values)
    if not active and (len(all_trials) >= limit or ctx is None or stopped):
        if ctx is None and not stopped:
            sweep.error = "the sweep's creator can no longer launch runs here; no more trials"
        _end(sweep, all_trials, values)
        _register_best(session, sweep)
    session.commit()


def _end(sweep: Sweep, all_trials: list[Run], values: dict[int, float | None]) -> None:
    """Close the sweep: succeeded when some trial was scored (an early stop is kept in
    `error` as a note), failed otherwise."""
    _update_best(sweep, all_trials, values)
    succeeded = any(values.get(t.id) is not None for t in all_trials)
    lifecycle.transition(sweep, SweepStatus.succeeded if succeeded else SweepStatus.failed)
    if not succeeded and sweep.error is None:
        sweep.error = f"no trial finished with a {sweep.metric}"
    sweep.finished_at = utcnow()


def _register_best(session: Session, sweep: Sweep) -> None:
    """The best trial's final model becomes the sweep's one registered version (trials are not
    registered as they finish: only the winner is worth deploying)."""
    if sweep.status != SweepStatus.succeeded or sweep.best_run_id is None:
        return
    best = session.get(Run, sweep.best_run_id)
    final = session.scalar(
        select(Checkpoint).where(
            Checkpoint.run_id == sweep.best_run_id, Checkpoint.is_final.is_(True)
        )
    )
    if best is None or final is None or best.status != RunStatus.succeeded:
        return
    version = registration.register_checkpoint(session=session, run=best, checkpoint=final)
    session.add(
        RunEvent(
            run_id=best.id,
            level="info",
            message=f"best trial of sweep {sweep.name}: registered as {version.serving_name} "
            f"(version {version.version})",
        )
    )


def _update_best(sweep: Sweep, all_trials: list[Run], values: dict[int, float | None]) -> None:
    scored = [(v, t.id) for t in all_trials if (v := values.get(t.id)) is not None]
    if scored:
        pick = min if sweep.direction == "minimize" else max
        sweep.best_run_id = pick(scored)[1]


def _launch_trial(
    session: Session, ctx: WorkspaceContext, sweep: Sweep, number: int, params: dict[str, Any]
) -> Run:
    config = RunConfig(**{**sweep.base_config, **params})
    return runs.create_run(
        session=session,
        ctx=ctx,
        dataset_id=sweep.dataset_id,
        config=config,
        base_model=sweep.base_model,
        name=f"{sweep.name} · trial {number}",
        sweep_fields={"sweep_id": sweep.id, "sweep_trial": number, "sweep_params": params},
    )


def advance_all(*, session: Session) -> None:
    """Every running sweep, one round each (the workers' dispatcher thread)."""
    ids = list(session.scalars(select(Sweep.id).where(Sweep.status == SweepStatus.running)))
    for sweep_id in ids:
        advance(session=session, sweep_id=sweep_id)


def summary(*, session: Session, sweep: Sweep) -> dict[str, Any]:
    """Trials with their params, score and state; the best so far."""
    rows = trials(session=session, sweep_id=sweep.id)
    items = []
    for run in rows:
        items.append(
            {
                "run_id": run.id,
                "trial": run.sweep_trial,
                "params": run.sweep_params or {},
                "status": "pruned" if run.sweep_pruned else run.status,
                "value": objective(session, sweep, run),
                "step": run.step,
            }
        )
    best = next((i for i in items if i["run_id"] == sweep.best_run_id), None)
    counts = dict(
        session.execute(
            select(Run.status, func.count()).where(Run.sweep_id == sweep.id).group_by(Run.status)
        ).all()
    )
    return {"trials": items, "best": best, "counts": counts, "budget": budget(sweep)}
