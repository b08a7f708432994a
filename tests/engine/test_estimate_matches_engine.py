"""The launch estimate's model sizes are the engine's: same parameter count, same shape."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from app.services.estimate import ARCHITECTURES
from workers.engine import KNOWN_BASE_MODELS
from workers.engine.scratch import scratch_config


def test_every_scratch_model_has_an_estimate() -> None:
    assert set(ARCHITECTURES) == set(KNOWN_BASE_MODELS)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_estimate_counts_the_parameters_of_the_model_the_engine_builds(name: str) -> None:
    spec = KNOWN_BASE_MODELS[name]
    arch = ARCHITECTURES[name]
    assert (arch.n_layer, arch.n_head, arch.n_embd) == (spec.n_layer, spec.n_head, spec.n_embd)
    assert arch.kind == spec.architecture
    config = scratch_config(
        name, vocab_size=arch.vocab_size, block_size=64, bos_token_id=0, eos_token_id=0,
        pad_token_id=0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    assert arch.parameters(64) == model.num_parameters()


# --- steps: the launch estimate counts them as the trainer will --------------------------


def _chat_rows(count: int, split: str | None = None) -> list[dict]:
    rows = []
    for i in range(count):
        row: dict = {
            "messages": [
                {"role": "user", "content": f"what is {i} plus one?"},
                {"role": "assistant", "content": f"{i + 1}"},
            ]
        }
        if split:
            row["split"] = split
        rows.append(row)
    return rows


def _label_rows(count: int) -> list[dict]:
    return [{"text": f"review {i}", "label": "pos" if i % 2 else "neg"} for i in range(count)]


@pytest.mark.parametrize(
    ("schema", "rows", "eval_split", "epochs", "batch_size", "accumulation"),
    [
        ("chat", _chat_rows(23), 0.1, 1.0, 8, 1),
        ("chat", _chat_rows(183), 0.1, 3.0, 8, 1),
        ("chat", _chat_rows(40) + _chat_rows(7, "validation") + _chat_rows(9, "test"), 0.1, 2.0,
         4, 2),
        ("chat", _chat_rows(30, "train") + _chat_rows(5, "test"), 0.2, 1.5, 8, 1),
        ("classification", _label_rows(300), 0.1, 3.0, 8, 1),
        ("classification", _label_rows(7), 0.1, 1.0, 2, 1),
        ("chat", _chat_rows(3), 0.1, 1.0, 8, 1),  # too few to hold one out
    ],
)  # fmt: skip
def test_the_estimate_plans_the_steps_the_trainer_takes(
    tmp_path, schema: str, rows: list[dict], eval_split: float, epochs: float, batch_size: int,
    accumulation: int,
) -> None:  # fmt: skip
    import json

    from app.services.estimate import planned_steps, train_documents
    from workers.engine import TrainConfig
    from workers.engine.callbacks import NullCallbacks
    from workers.engine.trainer import _prepare_data, plan_schedule

    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainConfig(
        output_dir=tmp_path / "run",
        train_file=path,
        train_format=schema,
        base_model="scratch-nano",
        eval_split=eval_split,
        epochs=epochs,
        batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        block_size=64,
        device="cpu",
    )
    prepared = _prepare_data(config, None, NullCallbacks())
    trainer_steps = plan_schedule(config, len(prepared.train_set)).total_steps

    counts = {name: sum(1 for r in rows if r.get("split") == name) for name in
              ("train", "validation", "test")}  # fmt: skip
    # A prepared version's report counts every row's split; an upload has none.
    untagged = sum(1 for r in rows if "split" not in r)
    splits = {**counts, "train": counts["train"] + untagged} if any(counts.values()) else None
    documents = train_documents(
        rows=len(rows), eval_split=eval_split, splits=splits, has_validation=False
    )
    assert documents == len(prepared.train_set)
    assert trainer_steps == planned_steps(
        max_steps=None, epochs=epochs, examples=documents, batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
    )  # fmt: skip
