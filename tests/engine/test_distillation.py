"""Logit distillation: a scratch student takes its teacher's tokenizer and learns the teacher's
softened distribution; a student with another vocabulary is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from workers.engine import TrainConfig, train
from workers.engine.distill import distillation_loss, load_teacher
from workers.engine.tokenizer import train_tokenizer

from .test_engine import Recorder, sentences


def corpus(path: Path, count: int = 120) -> Path:
    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences(count)))
    return path


def config(tmp: Path, name: str, **overrides: object) -> TrainConfig:
    values: dict = dict(
        output_dir=tmp / name,
        train_file=corpus(tmp / "corpus.jsonl"),
        train_format="text",
        base_model="scratch-nano",
        learning_rate=3e-3,
        batch_size=8,
        block_size=32,
        max_steps=30,
        eval_split=0.1,
        save_steps=1000,
        device="cpu",
        vocab_size=400,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("teacher")
    return train(config(tmp, "teacher"), Recorder()).final_dir


def held_out_kl(student, teacher, tokenizer) -> float:  # type: ignore[no-untyped-def]
    ids = torch.tensor([tokenizer(" ".join(sentences(3, seed=99)))["input_ids"][:32]])
    with torch.no_grad():
        return float(distillation_loss(student(ids).logits, teacher(ids).logits, ids, 2.0))


def test_a_scratch_student_learns_the_teachers_distribution_with_its_tokenizer(
    tmp_path: Path, teacher_dir: Path
) -> None:
    recorder = Recorder()
    cfg = config(tmp_path, "student", teacher_path=teacher_dir, distill_weight=1.0, seed=7)
    result = train(cfg, recorder)
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(teacher_dir).get_vocab()
    assert any("distilling from a" in line for _, line in recorder.logs)

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(result.final_dir).eval()
    set_seed(7)
    untrained = AutoModelForCausalLM.from_config(student.config).eval()
    assert held_out_kl(student, teacher, tokenizer) < 0.5 * held_out_kl(
        untrained, teacher, tokenizer
    )


def test_a_student_with_another_vocabulary_is_refused(tmp_path: Path, teacher_dir: Path) -> None:
    other = train_tokenizer(
        ["completely different words here"] * 50, vocab_size=300, model_max_length=32
    )
    cfg = config(tmp_path, "student", teacher_path=teacher_dir)
    with pytest.raises(ValueError, match="use the teacher's tokenizer"):
        load_teacher(cfg, other)


def test_the_soft_loss_is_zero_when_the_student_matches_the_teacher() -> None:
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
    assert float(distillation_loss(logits, logits, labels, 3.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits, torch.randn(2, 5, 11), labels, 3.0)) > 0


def test_distillation_settings_are_checked() -> None:
    base = dict(output_dir=Path("/x"), train_file=Path("/x"), train_format="preference")
    with pytest.raises(ValueError, match="logit distillation trains causal_lm or sft"):
        TrainConfig(**base, teacher_path=Path("/t")).validate()
    with pytest.raises(ValueError, match="distillation weight"):
        TrainConfig(**{**base, "train_format": "text"}, distill_weight=2.0).validate()
