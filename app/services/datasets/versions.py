"""Dataset versions: immutable canonical JSONL files; a run records the one it trained on."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import Conflict, NotFound, ValidationFailed
from app.db.models import Dataset, DatasetVersion, DatasetVersionStatus
from app.services.workspaces.access import WorkspaceContext, get_in_workspace

READY = DatasetVersionStatus.ready
PREPARING = DatasetVersionStatus.preparing
FAILED = DatasetVersionStatus.failed


def list_for_dataset(*, session: Session, dataset: Dataset) -> list[DatasetVersion]:
    return list(
        session.scalars(
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == dataset.id)
            .order_by(DatasetVersion.version.desc())
        )
    )


def get_for_dataset(
    *, session: Session, ctx: WorkspaceContext, dataset: Dataset, version_id: int
) -> DatasetVersion:
    """A version by id, answering 404 unless it belongs to this dataset (and workspace)."""
    version = get_in_workspace(
        session=session, ctx=ctx, model=DatasetVersion, row_id=version_id, what="dataset version"
    )
    if version.dataset_id != dataset.id:
        raise ValidationFailed(
            f"dataset version {version_id} does not belong to dataset {dataset.id}",
            param="dataset_version_id",
        )
    return version


def newest_ready(*, session: Session, dataset: Dataset) -> DatasetVersion | None:
    return session.scalars(
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset.id, DatasetVersion.status == READY)
        .order_by(DatasetVersion.version.desc())
        .limit(1)
    ).first()


def ready_for_datasets(*, session: Session, datasets: list[Dataset]) -> list[DatasetVersion]:
    """The ready versions of these datasets (the launch form's choices), newest first."""
    ids = [d.id for d in datasets]
    if not ids:
        return []
    return list(
        session.scalars(
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id.in_(ids), DatasetVersion.status == READY)
            .order_by(DatasetVersion.dataset_id, DatasetVersion.version.desc())
        )
    )


def version_for_run(
    *, session: Session, ctx: WorkspaceContext, dataset: Dataset, version_id: int | None
) -> DatasetVersion:
    """The version a new run trains on: the one asked for (it must belong to the dataset and
    be ready), else the newest ready one (409 when there is none, rather than a crash)."""
    if version_id is None:
        newest = newest_ready(session=session, dataset=dataset)
        if newest is None:
            raise Conflict(
                f"dataset {dataset.id} has no ready version yet; wait for it to be prepared",
                param="dataset_version_id",
            )
        return newest
    version = get_for_dataset(session=session, ctx=ctx, dataset=dataset, version_id=version_id)
    if version.status != READY:
        raise Conflict(
            f"dataset version {version_id} is {version.status}, not ready; "
            "wait for it or choose another version",
            param="dataset_version_id",
        )
    return version


def next_number(*, session: Session, dataset: Dataset) -> int:
    """The next version number of a dataset (1 for the upload)."""
    current = session.scalars(
        select(DatasetVersion.version)
        .where(DatasetVersion.dataset_id == dataset.id)
        .order_by(DatasetVersion.version.desc())
        .limit(1)
    ).first()
    return (current or 0) + 1


def chosen(
    *, session: Session, ctx: WorkspaceContext, dataset: Dataset, version_id: int | None
) -> DatasetVersion:
    """The version a read asks for (any status), else the newest ready one."""
    if version_id is not None:
        return get_for_dataset(session=session, ctx=ctx, dataset=dataset, version_id=version_id)
    version = newest_ready(session=session, dataset=dataset)
    if version is None:
        raise NotFound(f"dataset {dataset.id} has no ready version")
    return version
