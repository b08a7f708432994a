"""Dataset pages: the list with the upload form, one dataset with a preview, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from sqlalchemy.orm import Session
from starlette.responses import Response

from app.core.errors import DomainError, Forbidden
from app.core.settings import get_settings
from app.services.datasets import access as dataset_access
from app.services.datasets import intake as dataset_intake
from app.services.datasets import service as datasets
from app.services.datasets import versions as dataset_versions
from app.web.pages import CSRF, DbDep, PageContext, PageDep, PageRoute, redirect, rollback
from app.web.rendering import is_htmx, render

router = APIRouter(prefix="/datasets", route_class=PageRoute, include_in_schema=False)


def _list_context(session: Session, pc: PageContext) -> dict[str, Any]:
    return {
        "datasets": datasets.list_for_workspace(session=session, ctx=pc.ctx),
        "max_upload_bytes": get_settings().max_upload_bytes,
        "max_dataset_bytes": get_settings().max_dataset_bytes,
        "schemas": list(SCHEMA_LABELS.items()),
    }


SCHEMA_LABELS = {
    "text": "text",
    "prompt_completion": "prompt / completion",
    "chat": "chat messages",
    "instruction": "instruction / input / output",
    "classification": "text + label",
    "seq2seq": "source / target",
    "token_classification": "entities (CoNLL, tokens + tags, text + spans)",
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
    schema_name: Annotated[str | None, Form(alias="schema", max_length=32)] = None,
    column_map: Annotated[str | None, Form(max_length=4000)] = None,
    on_error: Annotated[str, Form(max_length=20)] = "reject",
    text_split: Annotated[str, Form(max_length=20)] = "blocks",
) -> Response:
    """htmx swaps the upload panel (error or success) and refreshes the table out of band.
    Big files do not come here: static/js/upload.js sends them in chunks to /api/v1/uploads."""
    try:
        options = dataset_intake.parse_options(
            schema=schema_name or None,
            column_map=column_map,
            on_error=on_error,
            text_split=text_split,
        )
        outcome = dataset_intake.ingest_upload(
            session=session,
            ctx=pc.ctx,
            stream=file.file,
            filename=file.filename,
            name=name or None,
            options=options,
        )
        dataset = outcome.dataset
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
    if not is_htmx(request):
        return redirect(request, f"/datasets/{dataset.id}")
    return render(
        request,
        "datasets.html",
        {
            **_list_context(session, pc),
            "uploaded": dataset,
            "duplicate": outcome.duplicate,
            "rejected_rows": datasets.rejected_rows(session=session, dataset=dataset),
            "oob": True,
            "uploaded_preview": datasets.preview(dataset=dataset, rows=3),
        },
        block=("upload_panel", "dataset_table"),
    )


PAGE_ROWS = 10
QueryText = Annotated[str | None, Query(max_length=200)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]


def _detail_context(
    session: Session, pc: PageContext, dataset_id: int, *, offset: int, query: str | None
) -> dict[str, Any]:
    dataset = dataset_access.get_for_member(session=session, ctx=pc.ctx, dataset_id=dataset_id)
    versions = dataset_versions.list_for_dataset(session=session, dataset=dataset)
    current = next((v for v in versions if v.status == "ready"), None)
    report = (current.report or {}) if current is not None else {}
    first = versions[-1] if versions else None
    first_report = (first.report or {}) if first is not None else {}
    page = None
    if current is not None:
        page = datasets.preview_page(version=current, offset=offset, limit=PAGE_ROWS, query=query)
    return {
        "dataset": dataset,
        "versions": versions,
        "current": current,
        "stats": report.get("stats") or {},
        "detection": report.get("detection"),
        "problems": first_report.get("problems") or [],
        "upload": first_report.get("upload") or {},
        "page": page,
        "query": query,
    }


@router.get("/{dataset_id}")
def dataset_detail(
    dataset_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    q: QueryText = None,
    offset: Offset = 0,
) -> Response:
    context = _detail_context(session, pc, dataset_id, offset=offset, query=q)
    return render(request, "dataset_detail.html", context)


@router.get("/{dataset_id}/rows")
def dataset_rows(
    dataset_id: int,
    request: Request,
    session: DbDep,
    pc: PageDep,
    q: QueryText = None,
    offset: Offset = 0,
) -> Response:
    """The paged, searchable rows: htmx swaps the block in place; without htmx, the page."""
    context = _detail_context(session, pc, dataset_id, offset=offset, query=q)
    return render(request, "dataset_detail.html", context, block="rows")


@router.post("/{dataset_id}/delete", dependencies=[CSRF])
def delete_dataset(dataset_id: int, request: Request, session: DbDep, pc: PageDep) -> Response:
    datasets.delete(session=session, ctx=pc.ctx, dataset_id=dataset_id)
    return redirect(request, "/datasets")
