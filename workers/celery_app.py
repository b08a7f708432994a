"""The Celery application the workers run: `celery -A workers.celery_app worker -Q gpu,cpu`."""

from __future__ import annotations

from celery import Celery

from app.core.celery_config import celery_options
from app.core.settings import get_settings

celery_app = Celery("llmide", include=["workers.tasks"])
celery_app.conf.update(celery_options(get_settings()))
app = celery_app
