"""The web's base-model catalog and the engine's model definitions describe the same models."""

from app.services.base_models import CATALOG
from workers.engine import KNOWN_BASE_MODELS


def test_web_catalog_lists_exactly_the_engines_models_with_the_same_facts() -> None:
    assert set(CATALOG) == set(KNOWN_BASE_MODELS)
    for name, entry in CATALOG.items():
        spec = KNOWN_BASE_MODELS[name]
        assert entry.parameters == spec.parameters_label
        assert entry.context_length == spec.context_length
        assert entry.description == spec.description
