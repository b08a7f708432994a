"""One spelling of the dataset contract (datacontract, docs/DATA_CONTRACT.md) for the web,
the workers and the engine."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import datacontract as contract

ROOT = Path(__file__).resolve().parents[1]


def test_the_web_the_workers_and_the_engine_read_the_same_schema_names() -> None:
    from app.api.routes.datasets import SchemaName
    from app.core import prep_recipe
    from app.services.datasets import detection as dataset_detection
    from app.services.runs import config as run_config
    from workers.dataprep import fields
    from workers.engine import config as engine_config
    from workers.engine import data as engine_data

    assert get_args(SchemaName) == contract.SCHEMAS  # a Literal for the OpenAPI schema
    assert prep_recipe.SCHEMAS is contract.SCHEMAS
    assert engine_data.SCHEMAS is contract.SCHEMAS
    assert dataset_detection.SCHEMAS is contract.KEYS
    assert run_config.TASK_SCHEMAS is engine_config.TASK_SCHEMAS is contract.TASK_SCHEMAS
    assert run_config.DEFAULT_TASK is engine_config.DEFAULT_TASK is contract.DEFAULT_TASK
    for schema in contract.SCHEMAS:
        assert fields.text_keys(schema) == contract.TEXT_KEYS[schema]


def test_every_schema_has_its_keys_text_keys_a_default_task_and_a_task_that_reads_it() -> None:
    assert set(contract.KEYS) == set(contract.TEXT_KEYS) == set(contract.SCHEMAS)
    for schema in contract.SCHEMAS:
        assert set(contract.TEXT_KEYS[schema]) <= set(contract.KEYS[schema])
        task = contract.DEFAULT_TASK[schema]
        assert schema in contract.TASK_SCHEMAS[task]
    assert set(contract.TASK_SCHEMAS) == set(contract.TASK_TYPES)


def test_the_data_contract_document_names_every_schema_and_its_keys() -> None:
    """The file five modules cite exists and says what the code says."""
    text = (ROOT / "docs" / "DATA_CONTRACT.md").read_text()
    for schema, keys in contract.KEYS.items():
        assert f"| `{schema}` |" in text, schema
        assert all(f"`{key}`" in text for key in keys), schema
    for split in contract.SPLITS:
        assert f"`{split}`" in text
