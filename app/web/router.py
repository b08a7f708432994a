"""Aggregates the HTML pages' routers."""

from fastapi import APIRouter

pages_router = APIRouter()
