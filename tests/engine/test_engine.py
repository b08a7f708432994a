"""The training engine end to end: real tokenizer training, real Trainer runs on a tiny corpus."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.engine import (
    EVAL_METRIC_KEYS,
    KNOWN_BASE_MODELS,
    TRAIN_METRIC_KEYS,
    DatasetError,
    NullCallbacks,
    TrainCallbacks,
    TrainConfig,
    TrainResult,
    train,
)
from workers.engine.data import build_blocks, read_rows, split_rows
from workers.engine.device import plan_device
from workers.engine.scratch import scratch_config
from workers.engine.system_metrics import SYSTEM_METRIC_KEYS
from workers.engine.tokenizer import train_tokenizer

SUBJECTS = ["the cat", "the dog", "a small bird", "my friend", "the old teacher"]
VERBS = ["sees", "likes", "finds", "watches", "paints"]
OBJECTS = ["the red ball", "a green apple", "the big house", "the tall tree", "a blue car"]


def sentences(count: int, seed: int = 0) -> list[str]:
    """Simple repetitive English, so a tiny model's loss falls within a few dozen steps."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@dataclass
class Recorder(NullCallbacks):
    """Keeps everything the engine reports; optionally asks to stop after a given step."""

    stop_after: int | None = None
    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    progress: list[tuple[int, int]] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)
    checkpoints: list[tuple[int, Path, dict[str, float]]] = field(default_factory=list)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.append((step, metrics))

    def on_progress(self, step: int, total_steps: int) -> None:
        self.progress.append((step, total_steps))

    def on_log(self, level: str, message: str) -> None:
        self.logs.append((level, message))

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self.checkpoints.append((step, path, metrics))

    def should_stop(self) -> bool:
        if self.stop_after is None or not self.progress:
            return False
        return self.progress[-1][0] >= self.stop_after

    def train_losses(self) -> list[float]:
        return [m["train_loss"] for _, m in self.metrics if "train_loss" in m]

    def eval_losses(self) -> list[float]:
        return [m["eval_loss"] for _, m in self.metrics if "eval_loss" in m]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    return write_jsonl(path, [{"text": s} for s in sentences(400)])


@pytest.fixture(scope="module")
def base_config(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    return TrainConfig(
        output_dir=tmp_path_factory.mktemp("run"),
        train_file=corpus,
        train_format="text",
        base_model="scratch-tiny",
        learning_rate=2e-3,
        batch_size=8,
        block_size=32,
        max_steps=30,
        save_steps=8,
        device="cpu",
    )


@pytest.fixture(scope="module")
def finished_run(base_config: TrainConfig) -> tuple[TrainResult, Recorder]:
    """One 30-step run shared by the tests that only inspect its results."""
    recorder = Recorder()
    return train(base_config, recorder), recorder


def test_recorder_implements_the_callbacks_protocol() -> None:
    assert isinstance(Recorder(), TrainCallbacks)
    assert isinstance(NullCallbacks(), TrainCallbacks)


def test_training_reduces_loss_and_saves_loadable_safetensors_checkpoints(
    finished_run: tuple[TrainResult, Recorder], base_config: TrainConfig
) -> None:
    result, recorder = finished_run
    assert result.global_step == 30 and not result.stopped

    losses = recorder.train_losses()
    assert len(losses) == 30
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert recorder.eval_losses(), "no evaluation was reported"
    for _, metrics in recorder.metrics:
        assert set(metrics) in (set(TRAIN_METRIC_KEYS), set(EVAL_METRIC_KEYS)) or set(
            metrics
        ) <= set(SYSTEM_METRIC_KEYS)
    system = [m for _, m in recorder.metrics if "cpu_percent" in m]
    assert system, "system metrics were not reported"
    assert all(m["ram_mb"] > 10 and m["samples_per_second"] > 0 for m in system)
    assert not any("gpu_utilization" in m or "mfu" in m for m in system), "no GPU here"
    assert all(m["tokens_per_second"] > 0 for _, m in recorder.metrics if "train_loss" in m)
    assert recorder.progress[-1] == (30, 30)
    assert any(message.startswith("tokenizer trained: vocab") for _, message in recorder.logs)

    assert [step for step, _, _ in recorder.checkpoints] == [8, 16, 24, 30]
    # Each checkpoint is announced once (a job's events list showed every one twice).
    saved = [message for _, message in recorder.logs if message.startswith("checkpoint saved")]
    assert saved == [f"checkpoint saved at step {step}" for step in (8, 16, 24, 30)]
    totals = [m["trained_tokens"] for _, m in recorder.metrics if "trained_tokens" in m]
    assert totals == sorted(totals) and totals[0] > 0  # a running total
    for step, path, metrics in recorder.checkpoints:
        assert path == base_config.output_dir / "checkpoints" / f"checkpoint-{step}"
        assert "train_loss" in metrics
    for directory in [path for _, path, _ in recorder.checkpoints] + [result.final_dir]:
        assert (directory / "model.safetensors").is_file()
        assert not (directory / "pytorch_model.bin").exists()
        model = AutoModelForCausalLM.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        assert model.config.vocab_size == len(tokenizer)
    assert result.final_dir == base_config.output_dir / "final"
    assert result.metrics["eval_loss"] == recorder.eval_losses()[-1]


def test_the_final_model_generates_text_and_stops_at_end_tokens(
    finished_run: tuple[TrainResult, Recorder],
) -> None:
    result, _ = finished_run
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    assert tokenizer.eos_token_id in model.generation_config.eos_token_id
    inputs = tokenizer("the cat", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_should_stop_ends_the_run_early_with_a_final_checkpoint(
    base_config: TrainConfig, tmp_path: Path
) -> None:
    recorder = Recorder(stop_after=5)
    result = train(replace(base_config, output_dir=tmp_path), recorder)

    assert result.stopped
    assert result.global_step == 5
    assert recorder.checkpoints[-1][0] == 5
    assert (tmp_path / "checkpoints" / "checkpoint-5" / "trainer_state.json").is_file()
    assert (result.final_dir / "model.safetensors").is_file()
    assert max(step for step, _ in recorder.progress) == 5


def test_resuming_from_a_checkpoint_continues_the_step_count(
    finished_run: tuple[TrainResult, Recorder], base_config: TrainConfig, tmp_path: Path
) -> None:
    _, first = finished_run
    checkpoint = base_config.output_dir / "checkpoints" / "checkpoint-16"
    recorder = Recorder()
    result = train(
        replace(base_config, output_dir=tmp_path, resume_from=checkpoint, max_steps=20), recorder
    )

    assert result.global_step == 20
    assert [step for step, _ in recorder.progress] == [17, 18, 19, 20]
    assert not any(message.startswith("tokenizer trained") for _, message in recorder.logs)
    resumed = AutoTokenizer.from_pretrained(result.final_dir)
    original = AutoTokenizer.from_pretrained(checkpoint)
    assert resumed.get_vocab() == original.get_vocab()
    # The optimizer, schedule and data order come back too: the loss does not jump back up.
    first_losses = dict((step, m["train_loss"]) for step, m in first.metrics if "train_loss" in m)
    assert recorder.train_losses()[0] < first_losses[1] / 2


def test_chat_jsonl_trains_and_the_saved_tokenizer_applies_the_chat_template(
    tmp_path: Path,
) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": f"What does {s.split(' ', 2)[1]} do?"},
                {"role": "assistant", "content": s},
            ]
        }
        for s in sentences(120, seed=1)
    ]
    config = TrainConfig(
        output_dir=tmp_path / "run",
        train_file=write_jsonl(tmp_path / "chat.jsonl", rows),
        train_format="chat",
        base_model="scratch-nano",
        learning_rate=3e-3,
        block_size=64,
        max_steps=8,
        device="cpu",
    )
    recorder = Recorder()
    result = train(config, recorder)

    assert result.global_step == 8
    assert recorder.eval_losses()
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    messages = [{"role": "user", "content": "What does the cat do?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|user|>\nWhat does the cat do?<|end|>\n<|assistant|>\n"
    # transformers 5 returns a BatchEncoding here by default; return_dict pins that on 4.x too.
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    assert encoded["input_ids"][0] == tokenizer.convert_tokens_to_ids("<|user|>")
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert tokenizer.convert_tokens_to_ids("<|end|>") in model.generation_config.eos_token_id


def test_a_txt_file_of_one_paragraph_still_gets_an_eval_set(tmp_path: Path) -> None:
    path = tmp_path / "story.txt"
    path.write_text("\n".join(sentences(150)) + "\n", encoding="utf-8")
    config = TrainConfig(
        output_dir=tmp_path / "run",
        train_file=path,
        train_format="txt",
        base_model="scratch-nano",
        block_size=32,
        max_steps=4,
        device="cpu",
    )
    recorder = Recorder()
    assert train(config, recorder).global_step == 4
    assert recorder.eval_losses(), "one document is split by blocks, not skipped"


def test_a_validation_file_replaces_the_eval_split(corpus: Path, tmp_path: Path) -> None:
    validation = write_jsonl(tmp_path / "val.jsonl", [{"text": s} for s in sentences(7, seed=9)])
    config = TrainConfig(
        output_dir=tmp_path / "run",
        train_file=corpus,
        train_format="text",
        validation_file=validation,
        base_model="scratch-nano",
        block_size=32,
        max_steps=3,
        eval_steps=1,
        device="cpu",
    )
    recorder = Recorder()
    train(config, recorder)
    assert ("info", "data loaded: 400 training and 7 eval documents") in recorder.logs
    assert len(recorder.eval_losses()) == 3


def test_validate_rejects_out_of_range_values_with_readable_messages(tmp_path: Path) -> None:
    config = TrainConfig(output_dir=tmp_path, train_file=tmp_path / "x.jsonl", train_format="text")
    config.validate()

    with pytest.raises(ValueError, match="learning rate must be greater than 0"):
        replace(config, learning_rate=-1e-3).validate()
    with pytest.raises(ValueError) as excinfo:
        replace(config, batch_size=0, base_model="gpt-17", device="tpu").validate()
    message = str(excinfo.value)
    assert "batch size must be between 1 and 4096 (got 0)" in message
    assert "unknown base model 'gpt-17'" in message
    assert "device must be auto, cpu, cuda or cuda:N" in message
    with pytest.raises(ValueError, match="block size must be between 8 and 512"):
        replace(config, base_model="scratch-nano", block_size=2048).validate()


def test_train_refuses_an_invalid_config_before_touching_the_disk(tmp_path: Path) -> None:
    config = TrainConfig(
        output_dir=tmp_path / "run", train_file=tmp_path / "x.jsonl", train_format="csv"
    )
    with pytest.raises(
        ValueError, match="train_format must be one of text, prompt_completion, chat, .*, txt"
    ):
        train(config, NullCallbacks())
    assert not (tmp_path / "run").exists()


def test_a_malformed_dataset_line_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"txt": "typo"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="bad.jsonl line 2: expected an object with a string"):
        read_rows(path, "text")


def test_a_txt_file_is_split_into_paragraph_documents(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("first line\nsecond line\n\n\nnext paragraph\n", encoding="utf-8")
    assert read_rows(path, "txt") == ["first line\nsecond line", "next paragraph"]


def test_eval_split_is_seeded_and_disjoint() -> None:
    rows = [f"doc {i}" for i in range(50)]
    train_rows, eval_rows = split_rows(rows, 0.1, seed=42)
    assert len(eval_rows) == 5 and not set(train_rows) & set(eval_rows)
    assert split_rows(rows, 0.1, seed=42) == (train_rows, eval_rows)
    assert split_rows(["only one"], 0.1, seed=42) == (["only one"], [])


def test_blocks_join_documents_with_eos_and_mask_the_padded_tail() -> None:
    texts = sentences(50)
    tokenizer = train_tokenizer(texts, vocab_size=400, model_max_length=16)
    blocks = build_blocks(texts[:3], tokenizer, block_size=16)
    flat = torch.cat([row["input_ids"][row["attention_mask"] == 1] for row in blocks])
    expected: list[int] = []
    for text in texts[:3]:
        expected += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    assert flat.tolist() == expected
    last = blocks[len(blocks) - 1]
    assert (last["labels"][last["attention_mask"] == 0] == -100).all()


def test_tokenizer_training_is_deterministic() -> None:
    texts = sentences(200)
    first = train_tokenizer(texts, vocab_size=500, model_max_length=64)
    second = train_tokenizer(texts, vocab_size=500, model_max_length=64)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert first.eos_token == "<|endoftext|>" and first.eos_token_id == 0


def test_known_base_models_report_their_true_parameter_count() -> None:
    for spec in KNOWN_BASE_MODELS.values():
        config = scratch_config(
            spec.name,
            vocab_size=1000,
            block_size=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = AutoModelForCausalLM.from_config(config)
        assert model.num_parameters() == spec.parameter_count(vocab_size=1000, n_positions=64)
        assert spec.description and spec.context_length >= 128


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPU")
def test_asking_for_a_gpu_on_a_cpu_machine_fails_with_a_readable_error() -> None:
    with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
        plan_device("cuda:1")
    assert plan_device("auto").kind == "cpu"


def _split_corpus(tmp_path: Path) -> Path:
    """A prepared version's file: rows marked train, validation and test, each with a word of
    its own so a decoded dataset shows where every row went."""
    rows = [{"text": f"{s} trainword", "split": "train"} for s in sentences(60, seed=3)]
    rows += [{"text": f"{s} validword", "split": "validation"} for s in sentences(9, seed=4)]
    rows += [{"text": f"{s} testword", "split": "test"} for s in sentences(11, seed=5)]
    random.Random(0).shuffle(rows)
    return write_jsonl(tmp_path / "prepared.jsonl", rows)


def test_a_prepared_versions_test_rows_never_reach_training(tmp_path: Path) -> None:
    from workers.engine.trainer import _prepare_data

    config = TrainConfig(
        output_dir=tmp_path / "run",
        train_file=_split_corpus(tmp_path),
        train_format="text",
        base_model="scratch-nano",
        block_size=32,
        max_steps=2,
        eval_split=0.3,  # ignored: the version has its own validation rows
        device="cpu",
    )
    recorder = Recorder()
    prepared = _prepare_data(config, None, recorder)
    assert ("info", "data loaded: 60 training and 9 eval documents") in recorder.logs
    trained = prepared.tokenizer.decode(prepared.train_set.input_ids.flatten())
    evaluated = prepared.tokenizer.decode(prepared.eval_set.input_ids.flatten())
    assert "trainword" in trained and "testword" not in trained and "validword" not in trained
    assert "validword" in evaluated and "testword" not in evaluated
    # And a whole run trains on exactly those documents.
    recorder = Recorder()
    assert train(config, recorder).global_step == 2
    assert ("info", "data loaded: 60 training and 9 eval documents") in recorder.logs


def test_a_version_without_validation_rows_holds_out_a_share_of_its_train_rows(
    tmp_path: Path,
) -> None:
    from workers.engine.data import read_split_rows, rows_by_split

    rows = [{"text": s, "split": "train"} for s in sentences(20)]
    rows += [{"text": "held back", "split": "test"}]
    marked = read_split_rows(write_jsonl(tmp_path / "v.jsonl", rows), "text")
    train_rows, eval_rows = rows_by_split(marked, 0.1, seed=1)
    assert (len(train_rows), len(eval_rows)) == (18, 2)
    assert "held back" not in train_rows + eval_rows


def test_an_unknown_split_name_is_named_in_the_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "split": "holdout"}])
    with pytest.raises(DatasetError, match="line 1: split must be one of"):
        read_rows(path, "text")
