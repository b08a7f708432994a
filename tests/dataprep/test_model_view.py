"""The data as the model sees it: loss masking token by token, special tokens, warnings."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from workers.dataprep import masking
from workers.dataprep.preview import model_view
from workers.engine.tokenizer import train_tokenizer

CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "你好吗？"},
        {"role": "assistant", "content": "我很好。"},
    ]
}


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    corpus = ["Be brief. What is 2+2? It is 4. 你好吗？我很好。 hello world"] * 20
    return train_tokenizer(corpus, vocab_size=300, model_max_length=256)


def test_chat_masking_trains_only_assistant_answers_and_their_end_of_turn(tokenizer) -> None:
    encoded = masking.encode_row(tokenizer, CHAT, "chat")
    trained = tokenizer.decode(
        [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab != -100]
    )
    masked = tokenizer.decode(
        [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab == -100]
    )
    assert trained == "It is 4.<|end|>\n我很好。<|end|>\n"
    assert masked == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
        "<|user|>\n你好吗？<|end|>\n<|assistant|>\n"
    )
    # Labels are the ids themselves where trained (the model shifts them), -100 elsewhere.
    assert all(
        lab in (-100, tok) for tok, lab in zip(encoded.input_ids, encoded.labels, strict=True)
    )
    assert encoded.warnings == []


def test_model_view_flags_special_tokens_eos_and_loss_per_token(tokenizer) -> None:
    view = model_view(tokenizer=tokenizer, rows=[CHAT], schema="chat", max_length=256)
    tokens = view["rows"][0]["tokens"]
    assert "".join(t["text"] for t in tokens) == tokenizer.apply_chat_template(
        CHAT["messages"], tokenize=False
    )
    first = tokens[0]
    assert first == {
        "text": "<|system|>",
        "id": tokenizer.convert_tokens_to_ids("<|system|>"),
        "loss": False,
        "special": True,
        "eos": False,
        "unknown": False,
    }
    ends = [t for t in tokens if t["text"] == "<|end|>"]
    assert [t["loss"] for t in ends] == [False, False, True, False, True]
    assert all(t["eos"] and t["special"] for t in ends)
    assert view["warnings"] == [] and view["summary"]["truncated_rows"] == 0
    assert view["rows"][0]["num_tokens"] == len(tokens)


def test_model_view_warns_about_truncation_with_its_rate(tokenizer) -> None:
    rows = [
        CHAT,
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        },
    ]
    view = model_view(tokenizer=tokenizer, rows=rows, schema="chat", max_length=20)
    warnings = {w["code"]: w for w in view["warnings"]}
    assert warnings["truncated"]["rows"] == 1 and warnings["truncated"]["rate"] == 0.5
    # The cut removed the answer's end-of-turn: the model would not learn to stop.
    assert warnings["missing_eos"]["rows"] == 1
    assert view["rows"][0]["truncated"] and view["rows"][0]["shown_tokens"] == 20
    assert view["summary"]["truncated_rate"] == 0.5


def test_token_histogram_counts_rows_per_power_of_two_bucket_and_trims_empty_ends() -> None:
    from workers.dataprep.preview import token_histogram

    assert token_histogram([3, 20, 31, 40, 9000]) == [
        {"min": 0, "max": 16, "rows": 1},
        {"min": 16, "max": 32, "rows": 2},
        {"min": 32, "max": 64, "rows": 1},
        {"min": 64, "max": 128, "rows": 0},
        {"min": 128, "max": 256, "rows": 0},
        {"min": 256, "max": 512, "rows": 0},
        {"min": 512, "max": 1024, "rows": 0},
        {"min": 1024, "max": 2048, "rows": 0},
        {"min": 2048, "max": 4096, "rows": 0},
        {"min": 4096, "max": 8192, "rows": 0},
        {"min": 8192, "max": None, "rows": 1},
    ]
    assert token_histogram([40, 50]) == [{"min": 32, "max": 64, "rows": 2}]
    assert token_histogram([]) == []


def test_model_view_warns_about_empty_answers_and_a_missing_template(tokenizer) -> None:
    empty = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}
    codes = {
        w["code"]
        for w in model_view(tokenizer=tokenizer, rows=[empty], schema="chat", max_length=64)[
            "warnings"
        ]
    }
    assert "empty_answer" in codes
    plain = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|endoftext|>"
    )
    view = model_view(tokenizer=plain, rows=[CHAT], schema="chat", max_length=256)
    assert "template_missing" in {w["code"] for w in view["warnings"]}
    assert not view["chat_template"]


def test_prompt_completion_without_template_masks_the_prompt_and_appends_eos(tokenizer) -> None:
    row = {"prompt": "Q: hello\nA:", "completion": " world"}
    encoded = masking.encode_row(tokenizer, row, "prompt_completion", chat_template=False)
    trained = [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab != -100]
    assert tokenizer.decode(trained) == " world<|endoftext|>"
    assert encoded.input_ids[-1] == tokenizer.eos_token_id


HEADLINES = [
    {"text": "央行宣布降息", "label": "finance"},
    {"text": "国足惜败", "label": "sport"},
    {"text": "高考今日开考", "label": "education"},
]


def test_a_tokenizer_that_cannot_read_chinese_shows_its_unknown_tokens_and_warns() -> None:
    from workers.dataprep.tokenizers import load_packaged

    minilm = load_packaged("minilm")
    view = model_view(tokenizer=minilm, rows=HEADLINES, schema="classification", max_length=64)
    summary = view["summary"]
    assert summary["unknown_rate"] > 0.5 and summary["unknown_tokens"] > 0
    [warning] = [w for w in view["warnings"] if w["code"] == "unknown_tokens"]
    assert "cannot read the data's script" in warning["message"] and warning["rows"] == 3
    unknown = [t for row in view["rows"] for t in row["tokens"] if t["unknown"]]
    assert unknown and all(not t["special"] for t in unknown)


def test_a_byte_level_tokenizer_reads_chinese_with_no_unknown_tokens(tokenizer) -> None:
    view = model_view(tokenizer=tokenizer, rows=HEADLINES, schema="classification", max_length=64)
    assert view["summary"]["unknown_rate"] == 0.0
    assert not [w for w in view["warnings"] if w["code"] == "unknown_tokens"]
