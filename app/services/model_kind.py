"""What kind of model a registered version is (chat/causal or classifier), read from its files.

The one reading the web side makes of a model folder's config.json: a `*ForSequenceClassification`
architecture answers `/predict` and has classification metrics; everything else generates text.
(The inference server reads the same field for the same reason; the web does not import it.)
"""

from __future__ import annotations

import json
from pathlib import Path

from app.core.errors import DomainError
from app.db.models import ModelVersion
from app.services import artifacts


def architectures(folder: Path) -> tuple[str, ...]:
    config = folder / "config.json"
    if not config.is_file():
        return ()
    try:
        found = json.loads(config.read_text()).get("architectures") or []
    except (ValueError, AttributeError, OSError):
        return ()
    return tuple(str(a) for a in found)


def is_classifier_folder(folder: Path) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in architectures(folder))


def is_classifier(version: ModelVersion) -> bool:
    """True when the version's weights are a sequence classifier (answers /predict)."""
    try:
        folder = artifacts.resolve(version.storage_key)
        if folder.is_dir():
            return is_classifier_folder(folder)
        # Trained on another host (object storage, docs/fleet.md): its config.json alone.
        config = json.loads(artifacts.read_member(version.storage_key, "config.json"))
    except (DomainError, ValueError):  # refused, missing or unreadable: nothing to classify
        return False
    found = config.get("architectures") if isinstance(config, dict) else None
    return any(str(a).endswith("ForSequenceClassification") for a in found or [])
