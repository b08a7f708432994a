"""The training engine: a TrainConfig in, TrainCallbacks out; no web app, no Celery.

The public names load on first use (PEP 562): importing a light submodule such as
`workers.engine.loss_mask` (the dataset preparation worker does) then costs no torch import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.engine.callbacks import (
        EVAL_METRIC_KEYS,
        TRAIN_METRIC_KEYS,
        NullCallbacks,
        TrainCallbacks,
    )
    from workers.engine.config import TrainConfig
    from workers.engine.data import DatasetError
    from workers.engine.scratch import KNOWN_BASE_MODELS, BaseModelSpec
    from workers.engine.trainer import TrainResult, train

_EXPORTS = {
    "EVAL_METRIC_KEYS": "callbacks",
    "TRAIN_METRIC_KEYS": "callbacks",
    "NullCallbacks": "callbacks",
    "TrainCallbacks": "callbacks",
    "TrainConfig": "config",
    "DatasetError": "data",
    "KNOWN_BASE_MODELS": "scratch",
    "BaseModelSpec": "scratch",
    "TrainResult": "trainer",
    "train": "trainer",
}

__all__ = [
    "EVAL_METRIC_KEYS",
    "KNOWN_BASE_MODELS",
    "TRAIN_METRIC_KEYS",
    "BaseModelSpec",
    "DatasetError",
    "NullCallbacks",
    "TrainCallbacks",
    "TrainConfig",
    "TrainResult",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"workers.engine.{_EXPORTS[name]}"), name)
