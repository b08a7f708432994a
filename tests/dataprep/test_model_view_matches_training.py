"""The model view highlights exactly the tokens the SFT training pipeline counts in its loss.

The training side is the engine's own data preparation (`trainer._prepare_data`: the dataset
file read by schema, turned into conversations, masked and dropped as a run does), so any
difference between the two code paths, in rendering or at the edges of an answer, fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from workers.dataprep.preview import model_view
from workers.engine import NullCallbacks, TrainConfig
from workers.engine.loss_mask import IGNORE_INDEX, TemplateError, mask_conversation
from workers.engine.sft import build_sft_dataset
from workers.engine.tokenizer import train_tokenizer
from workers.engine.trainer import _prepare_data

from ..engine.test_engine import write_jsonl

ROWS: dict[str, list[dict[str, Any]]] = {
    "chat": [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "It is 4."},
                {"role": "user", "content": "你好吗？"},
                {"role": "assistant", "content": " 我很好。"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hello world"},
            ]
        },
    ],
    "prompt_completion": [
        {"prompt": "Q: hello\nA:", "completion": " world"},
        {"prompt": "What is 2+2?", "completion": "It is 4."},
    ],
    "instruction": [
        {"instruction": "Name the colour.", "input": "red ball", "output": "red"},
        {"instruction": "Say hello.", "input": "  ", "output": "hello world"},
    ],
}
CORPUS = ["Be brief. What is 2+2? It is 4. 你好吗？我很好。 hello world Q: A: red ball"] * 20
# A template whose generation prompt ends in a space: the answer's first word is then one
# byte-level token (" It") that starts in the prompt and lies mostly in the answer.
SPACED_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'assistant: ' }}{%- endif -%}"
)


def spaced_tokenizer(directory: Path) -> Path:
    tokenizer = train_tokenizer(CORPUS, vocab_size=300, model_max_length=256)
    tokenizer.chat_template = SPACED_TEMPLATE
    tokenizer.save_pretrained(str(directory))
    return directory


def training_examples(
    tmp_path: Path, schema: str, tokenizer_dir: Path | None
) -> tuple[Any, list[dict[str, list[int]]]]:
    """The tokenizer and examples a scratch run prepares (or one resumed with the tokenizer
    saved in `tokenizer_dir`), every row kept for training."""
    config = TrainConfig(
        output_dir=tmp_path / "run",
        train_file=write_jsonl(tmp_path / f"{schema}.jsonl", ROWS[schema] * 10),
        train_format=schema,
        base_model="scratch-nano",
        block_size=256,
        eval_split=0.0,
        vocab_size=300,
        device="cpu",
    )
    prepared = _prepare_data(config, tokenizer_dir, NullCallbacks())
    return prepared.tokenizer, [prepared.train_set[i] for i in range(len(ROWS[schema]))]


@pytest.mark.parametrize("template", ["engine", "spaced"])
@pytest.mark.parametrize("schema", ["chat", "prompt_completion", "instruction"])
def test_model_view_highlights_exactly_the_tokens_training_counts(
    tmp_path: Path, schema: str, template: str
) -> None:
    tokenizer_dir = spaced_tokenizer(tmp_path / "tok") if template == "spaced" else None
    tokenizer, examples = training_examples(tmp_path, schema, tokenizer_dir)
    view = model_view(
        tokenizer=tokenizer, rows=ROWS[schema], schema=schema, max_length=256, detail_rows=8
    )
    assert len(view["rows"]) == len(examples)
    for shown, example in zip(view["rows"], examples, strict=True):
        assert [t["id"] for t in shown["tokens"]] == example["input_ids"]
        highlighted = {i for i, t in enumerate(shown["tokens"]) if t["loss"]}
        counted = {i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX}
        assert highlighted == counted
        assert counted, "every row trains on its answer"


def test_a_token_starting_in_the_prompt_is_not_trained_even_when_mostly_answer(
    tmp_path: Path,
) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(spaced_tokenizer(tmp_path)))
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "It is 4."}]
    ids, labels = mask_conversation(chat, tokenizer, max_length=64)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    first_answer = tokens.index("ĠIt")  # " It": its space ends the generation prompt
    assert labels[first_answer] == IGNORE_INDEX
    assert tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) == " is 4.\n"


def test_a_template_that_is_not_turn_by_turn_is_refused_by_training_and_shown_untrained() -> None:
    tokenizer = train_tokenizer(CORPUS, vocab_size=300, model_max_length=256)
    # The turn count up front: a conversation's prefix renders differently from the whole.
    tokenizer.chat_template = "{{ messages | length }}|" + SPACED_TEMPLATE
    row = ROWS["chat"][1]
    with pytest.raises(TemplateError, match="turn by turn"):
        build_sft_dataset([row["messages"]], tokenizer, max_length=64)
    view = model_view(tokenizer=tokenizer, rows=[row], schema="chat", max_length=64)
    assert not any(t["loss"] for t in view["rows"][0]["tokens"])
    assert "template_not_incremental" in {w["code"] for w in view["warnings"]}


def test_a_conversation_the_template_raises_on_is_refused_by_training_and_shown_untrained() -> None:
    tokenizer = train_tokenizer(CORPUS, vocab_size=300, model_max_length=256)
    messages = [
        {"role": "narrator", "content": "Once."},  # the engine's template knows no such role
        {"role": "assistant", "content": "hello world"},
    ]
    with pytest.raises(TemplateError, match="unsupported chat role"):
        build_sft_dataset([messages], tokenizer, max_length=64)
    view = model_view(
        tokenizer=tokenizer, rows=[{"messages": messages}], schema="chat", max_length=64
    )
    assert not any(t["loss"] for t in view["rows"][0]["tokens"])
    assert "template_failed" in {w["code"] for w in view["warnings"]}
