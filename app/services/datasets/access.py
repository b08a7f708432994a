"""Finding a dataset, or one of its versions, for a caller: in the caller's workspace, and with
the role the action needs.

Every action on one dataset starts here, so the role check lives next to the lookup instead of
being repeated by each route, page and service (`ctx.require(Role.editor)` then a get). The
role is checked first: a viewer is told it lacks the role whatever the id, and an id from
another workspace answers exactly like an unknown one (NotFound), so ids cannot be probed.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.core.errors import NotFound
from app.db.models import Dataset, DatasetVersion, Role
from app.services.workspaces.access import WorkspaceContext, get_in_workspace


def get_for_member(*, session: Session, ctx: WorkspaceContext, dataset_id: int) -> Dataset:
    """The dataset, for anyone in its workspace (viewers included): reading it."""
    return get_in_workspace(
        session=session, ctx=ctx, model=Dataset, row_id=dataset_id, what="dataset"
    )


def get_for_editor(*, session: Session, ctx: WorkspaceContext, dataset_id: int) -> Dataset:
    """The dataset, for an editor or owner of its workspace: changing it (delete); a viewer
    gets Forbidden."""
    ctx.require(Role.editor)
    return get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)


def get_version_for_member(
    *, session: Session, ctx: WorkspaceContext, dataset_id: int, version_id: int
) -> DatasetVersion:
    """A version of the caller's dataset; any other id (or another dataset's version) is 404."""
    dataset = get_for_member(session=session, ctx=ctx, dataset_id=dataset_id)
    version = session.get(DatasetVersion, version_id) if 0 < version_id < 2**31 else None
    if version is None or version.dataset_id != dataset.id:
        raise NotFound(f"dataset {dataset_id} has no version {version_id}")
    return version


def get_version_for_editor(
    *, session: Session, ctx: WorkspaceContext, dataset_id: int, version_id: int
) -> DatasetVersion:
    """A version, for an editor or owner: making something from it (a prepared version, a
    batch of generated answers); a viewer gets Forbidden."""
    ctx.require(Role.editor)
    return get_version_for_member(
        session=session, ctx=ctx, dataset_id=dataset_id, version_id=version_id
    )
