"""Aggregates the OpenAI-compatible facade's routers (under /v1); nothing else."""

from fastapi import APIRouter

from app.api.schemas.errors import OPENAI_ERRORS
from app.openai import batches, chat, completions, embeddings, files, fine_tuning, models

openai_router = APIRouter(responses=OPENAI_ERRORS)
for module in (files, fine_tuning, models, chat, completions, embeddings, batches):
    openai_router.include_router(module.router)
