"""What kind of model a registered version is (chat/causal or classifier), read from its files.

The one reading the web side makes of a model folder's config.json: a `*ForSequenceClassification`
architecture answers `/predict` with labels and has classification metrics, a
`*ForTokenClassification` one answers it with entities (NER); everything else generates text.
(The inference server reads the same field for the same reason; the web does not import it.)
"""

from __future__ import annotations

import json
from pathlib import Path

from app.core.errors import DomainError
from app.db.models import ModelVersion
from app.services import artifacts

CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification")


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
    return any(a.endswith(CLASSIFIER_SUFFIXES) for a in architectures(folder))


def is_token_classifier_folder(folder: Path) -> bool:
    return any(a.endswith("ForTokenClassification") for a in architectures(folder))


def version_architectures(version: ModelVersion) -> tuple[str, ...]:
    """The architectures the version's config.json names; () when it cannot be read."""
    try:
        folder = artifacts.resolve(version.storage_key)
        if folder.is_dir():
            return architectures(folder)
        # Trained on another host (object storage, docs/fleet.md): its config.json alone.
        config = json.loads(artifacts.read_member(version.storage_key, "config.json"))
    except (DomainError, ValueError):  # refused, missing or unreadable: nothing to classify
        return ()
    found = config.get("architectures") if isinstance(config, dict) else None
    return tuple(str(a) for a in found or [])


def is_classifier(version: ModelVersion) -> bool:
    """True when the version's weights are a sequence or token classifier (answers
    /predict: labels per text, or entities)."""
    return any(a.endswith(CLASSIFIER_SUFFIXES) for a in version_architectures(version))


def is_token_classifier(version: ModelVersion) -> bool:
    """True when the version finds entities (a token-classification / NER model)."""
    return any(a.endswith("ForTokenClassification") for a in version_architectures(version))
