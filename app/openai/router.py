"""Aggregates the OpenAI-compatible facade's routers (under /v1)."""

from fastapi import APIRouter

openai_router = APIRouter()
