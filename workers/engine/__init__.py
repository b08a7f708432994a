"""The training engine: a TrainConfig in, TrainCallbacks out; no web app, no Celery."""

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
