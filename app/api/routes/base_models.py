"""The base models a run can start from on this server (scratch, packaged, local)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.deps import CurrentUser
from app.services.registry import base_models

router = APIRouter(prefix="/api/v1", tags=["runs"])


class BaseModelRead(BaseModel):
    name: str
    description: str
    source: str  # "scratch" | "package" | "local"
    architecture: str
    parameters: str
    parameter_count: int | None
    context_length: int
    license: str | None
    tasks: list[str]
    supports_lora: bool
    languages: str  # what it reads: scratch bases read any (their tokenizer is trained on the data)


@router.get("/base-models", response_model=list[BaseModelRead])
def read_base_models(user: CurrentUser) -> list[BaseModelRead]:
    """The server's catalog (the same for every workspace); hub ids (`hf:org/model`) are
    accepted on launch where the server may download, and are not listed."""
    return [
        BaseModelRead(
            name=m.name,
            description=m.description,
            source=m.source,
            architecture=m.architecture,
            parameters=m.parameters,
            parameter_count=m.parameter_count,
            context_length=m.context_length,
            license=m.license,
            tasks=list(m.tasks),
            supports_lora=m.supports_lora,
            languages=m.languages,
        )
        for m in base_models.available().values()
    ]
