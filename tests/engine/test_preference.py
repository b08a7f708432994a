"""Preference tuning (DPO, ORPO, SimPO, KTO on TRL): a run moves a model toward the preferred
answers on prompts it never saw, streams its preference metrics, and keeps the reference it
is measured against."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from workers.engine import TrainConfig, train
from workers.engine.data import Preference, Unpaired, read_rows
from workers.engine.preference import method_arguments, preference_records

from .test_engine import Recorder

TOPICS = ["the sea", "a cat", "the moon", "bread", "a river", "winter", "music", "a tree"]
HELD_OUT = ["a lamp", "the desert", "a violin", "snow"]  # no training prompt mentions these


def kind(topic: str) -> str:
    return f"Gladly! Here is a kind answer about {topic}."


def curt(topic: str) -> str:
    return f"No. I will not talk about {topic}."


def pairs(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        topic = rng.choice(TOPICS)
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"Tell me about {topic}, please ({i})."}],
                "chosen": [{"role": "assistant", "content": kind(topic)}],
                "rejected": [{"role": "assistant", "content": curt(topic)}],
            }
        )
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path: Path, task: str, **overrides: object) -> TrainConfig:
    values: dict = dict(
        output_dir=tmp_path / f"run-{task}",
        train_file=write(tmp_path / "pairs.jsonl", pairs(96)),
        train_format="preference",
        task_type=task,
        base_model="scratch-nano",
        learning_rate=1e-3,
        batch_size=8,
        block_size=64,
        max_steps=16,
        eval_split=0.125,
        save_steps=100,
        device="cpu",
        vocab_size=400,
    )
    values.update(overrides)
    return TrainConfig(**values)


def answer_logp(model, tokenizer, topic: str, answer: str) -> float:  # type: ignore[no-untyped-def]
    """log p(answer | prompt) under the model, through the chat template training used."""
    prompt = [{"role": "user", "content": f"Tell me about {topic}, please (999)."}]
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": answer}], tokenize=False
    )
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tokenizer(whole, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logps = model(ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    picked = logps.gather(-1, targets[:, None])[:, 0]
    return float(picked[len(head_ids) - 1 :].sum())


def preference_margin(model, tokenizer) -> list[float]:  # type: ignore[no-untyped-def]
    return [
        answer_logp(model, tokenizer, t, kind(t)) - answer_logp(model, tokenizer, t, curt(t))
        for t in HELD_OUT
    ]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, Recorder, object]:
    tmp = tmp_path_factory.mktemp("dpo")
    cfg = config(tmp, "dpo")
    recorder = Recorder()
    return cfg, recorder, train(cfg, recorder)


def test_dpo_moves_the_model_toward_the_preferred_answers_on_prompts_it_never_saw(
    dpo_run: tuple[TrainConfig, Recorder, object],
) -> None:
    cfg, _, result = dpo_run
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)  # type: ignore[attr-defined]
    trained = AutoModelForCausalLM.from_pretrained(result.final_dir).eval()  # type: ignore[attr-defined]
    set_seed(cfg.seed)  # the untrained model the run started from: same size, same tokenizer
    untrained = AutoModelForCausalLM.from_config(trained.config).eval()

    after = preference_margin(trained, tokenizer)
    before = preference_margin(untrained, tokenizer)

    assert all(m > 0 for m in after), after  # every unseen prompt: the kind answer is likelier
    assert min(after) > max(before), (before, after)


def test_a_dpo_run_streams_rewards_margins_and_accuracy_on_train_and_held_out_pairs(
    dpo_run: tuple[TrainConfig, Recorder, object],
) -> None:
    _, recorder, result = dpo_run
    names = {name for _, metrics in recorder.metrics for name in metrics}
    for name in ("rewards_chosen", "rewards_rejected", "rewards_margins", "rewards_accuracies"):
        assert name in names and f"eval_{name}" in names, name
    assert {"logps_chosen", "logps_rejected", "eval_logps_chosen"} <= names
    assert "eval_perplexity" not in names  # exp of a DPO loss is no perplexity
    final = result.metrics  # type: ignore[attr-defined]
    assert final["eval_rewards_margins"] > 0 and final["eval_rewards_accuracies"] > 0.5
    assert any("reference: a frozen copy" in line for _, line in recorder.logs)


@pytest.mark.parametrize(
    ("task", "method", "reference"),
    [
        ("dpo", "lora", "the base with the adapters disabled"),
        ("orpo", "full", "none (reference-free)"),
        ("simpo", "full", "none (reference-free)"),
        ("kto", "full", "a frozen copy"),
    ],
)
def test_each_method_trains_and_reports_its_reference(
    tmp_path: Path, task: str, method: str, reference: str
) -> None:
    recorder = Recorder()
    result = train(config(tmp_path, task, method=method, max_steps=3), recorder)
    assert result.global_step == 3 and (result.final_dir / "config.json").is_file()
    assert any(f"reference: {reference}" in line for _, line in recorder.logs)
    assert "rewards_margins" in result.metrics
    if method == "lora":
        assert result.adapter_dir is not None and result.adapter_dir.is_dir()


def test_each_method_gets_its_own_knobs() -> None:
    base = dict(output_dir=Path("/x"), train_file=Path("/x"), train_format="preference")
    assert method_arguments(TrainConfig(**base, task_type="dpo", dpo_loss="ipo", beta=0.3)) == {
        "beta": 0.3,
        "loss_type": ["ipo"],
        "max_length": 128,
    }
    simpo = method_arguments(TrainConfig(**base, task_type="simpo", simpo_gamma=1.0))
    assert simpo["loss_type"] == "simpo" and simpo["beta"] == 2.0 and simpo["simpo_gamma"] == 1.0
    assert simpo["cpo_alpha"] == 0.0  # pure SimPO: no behaviour-cloning term
    kto = method_arguments(TrainConfig(**base, task_type="kto", kto_undesirable_weight=2.0))
    assert kto["undesirable_weight"] == 2.0 and kto["desirable_weight"] == 1.0
    with pytest.raises(ValueError, match="KTO needs a batch size of at least 2"):
        TrainConfig(**base, task_type="kto", batch_size=1).validate()


def test_kto_reads_unpaired_rows_and_splits_pairs_into_a_good_and_a_bad_answer(
    tmp_path: Path,
) -> None:
    user = [{"role": "user", "content": "hi"}]
    hello = [{"role": "assistant", "content": "hello"}]
    row = {"prompt": user, "completion": hello, "label": True}
    rows = read_rows(write(tmp_path / "kto.jsonl", [row]), "kto")
    assert rows == [Unpaired(user, hello, True)]
    pair = Preference(user, hello, [{"role": "assistant", "content": "b"}])
    assert [r["label"] for r in preference_records([pair], "kto")] == [True, False]
    assert preference_records([pair], "dpo") == [
        {"prompt": user, "chosen": pair.chosen, "rejected": pair.rejected}
    ]


def test_a_stopped_dpo_run_resumes_from_its_checkpoint_to_the_end(tmp_path: Path) -> None:
    cfg = config(tmp_path, "dpo", max_steps=6)
    first = train(cfg, Recorder(stop_after=3))
    assert first.stopped and first.global_step == 3
    checkpoint = cfg.checkpoints_dir / "checkpoint-3"
    assert (checkpoint / "trainer_state.json").is_file()
    recorder = Recorder()
    resumed = train(replace(cfg, resume_from=checkpoint), recorder)
    assert resumed.global_step == 6 and not resumed.stopped
    assert any("resumed at step 3" in line for _, line in recorder.logs)
    assert min(step for step, m in recorder.metrics if "rewards_margins" in m) == 4
