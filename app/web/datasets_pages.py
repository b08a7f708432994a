"""Dataset pages: the list with the upload form, one dataset with a preview, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from sqlalchemy.orm import Session
from starlette.responses import Response

from app.core.errors import DomainError, Forbidden
from app.core.settings import get_settings
from app.services import datasets
from app.web.pages import CSRF, DbDep, PageContext, PageDep, PageRoute, redirect, rollback
from app.web.rendering import is_htmx, render

router = APIRouter(prefix="/datasets", route_class=PageRoute, include_in_schema=False)


def _list_context(session: Session, pc: PageContext) -> dict[str, Any]:
    return {
        "datasets": datasets.list_for_workspace(session=session, ctx=pc.ctx),
        "max_upload_bytes": get_settings().max_upload_bytes,
    }


@router.get("")
def dataset_list(request: Request, session: DbDep, pc: PageDep) -> Response:
    return render(request, "datasets.html", _list_context(session, pc), block="dataset_table")


@router.post("", dependencies=[CSRF])
def upload_dataset(
    request: Request,
    session: DbDep,
    pc: PageDep,
    file: Annotated[UploadFile, File()],
    name: Annotated[str | None, Form(max_length=255)] = None,
) -> Response:
    """htmx swaps the upload panel (error or success) and refreshes the table out of band."""
    try:
        dataset = datasets.create_from_upload(
            session=session,
            ctx=pc.ctx,
            stream=file.file,
            filename=file.filename,
            name=name or None,
        )
    except Forbidden:
        raise  # not a form mistake: the error page says what role is needed
    except DomainError as exc:
        rollback(request)
        # A refused file is an answer, not a failure of the request: htmx gets 200 to swap it.
        return render(
            request,
            "datasets.html",
            {**_list_context(session, pc), "upload_error": exc.message},
            block="upload_panel",
            status_code=200 if is_htmx(request) else exc.status_code,
        )
    session.commit()
    if not is_htmx(request):
        return redirect(request, f"/datasets/{dataset.id}")
    return render(
        request,
        "datasets.html",
        {
            **_list_context(session, pc),
            "uploaded": dataset,
            "oob": True,
            "uploaded_preview": datasets.preview(dataset=dataset, rows=3),
        },
        block=("upload_panel", "dataset_table"),
    )


@router.get("/{dataset_id}")
def dataset_detail(dataset_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    dataset = datasets.get_for_member(session=session, ctx=pc.ctx, dataset_id=dataset_id)
    return render(
        request,
        "dataset_detail.html",
        {"dataset": dataset, "preview": datasets.preview(dataset=dataset)},
    )


@router.post("/{dataset_id}/delete", dependencies=[CSRF])
def delete_dataset(dataset_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    datasets.delete(session=session, ctx=pc.ctx, dataset_id=dataset_id)
    session.commit()
    return redirect(request, "/datasets")
