"""Preference datasets: each format is recognised and stored as canonical conversations, a
broken pair is named by its line, the statistics show the length bias, and the model view
shows both answers with the tokens that count."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from tests.conftest import Persona, Team
from tests.signed_in import HTML, sign_in

USER = [{"role": "user", "content": "What is 2+2?"}]
FOUR = [{"role": "assistant", "content": "It is 4."}]
FIVE = [{"role": "assistant", "content": "5"}]
CANONICAL = {"prompt": USER, "chosen": FOUR, "rejected": FIVE}


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def canonical_rows(persona: Persona, dataset_id: int) -> list[dict[str, Any]]:
    response = persona.get(f"/api/v1/datasets/{dataset_id}/download?kind=canonical")
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def _csv(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        (  # TRL's {prompt, chosen, rejected} with plain strings
            "trl.jsonl",
            jsonl([{"prompt": "What is 2+2?", "chosen": "It is 4.", "rejected": "5"}]),
        ),
        ("trl-messages.jsonl", jsonl([CANONICAL])),  # ... or with message lists
        (  # OpenAI's DPO JSONL
            "openai.jsonl",
            jsonl(
                [
                    {
                        "input": {"messages": USER, "tools": [], "parallel_tool_calls": True},
                        "preferred_output": FOUR,
                        "non_preferred_output": FIVE,
                    }
                ]
            ),
        ),
        (  # Anthropic HH: two whole transcripts, no prompt column
            "hh.jsonl",
            jsonl(
                [
                    {
                        "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.",
                        "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5",
                    }
                ]
            ),
        ),
        (  # whole conversations as message lists, in CSV cells
            "hh.csv",
            _csv([{"chosen": json.dumps(USER + FOUR), "rejected": json.dumps(USER + FIVE)}]),
        ),
    ],
)
def test_each_preference_format_becomes_the_same_canonical_pair(
    team: Team, filename: str, content: str
) -> None:
    response = team.editor.upload(filename, content)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "preference" and body["num_rows"] == 1
    assert canonical_rows(team.editor, body["id"]) == [CANONICAL]


def test_kto_rows_keep_their_desirable_label(team: Team) -> None:
    rows = [
        {"prompt": "What is 2+2?", "completion": "It is 4.", "label": True},
        {"prompt": "What is 2+2?", "completion": "5", "label": "false"},
    ]
    response = team.editor.upload("kto.jsonl", jsonl(rows))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "kto"
    assert [r["label"] for r in canonical_rows(team.editor, body["id"])] == [True, False]


def test_a_broken_pair_is_named_by_its_line_and_keep_valid_keeps_the_others(team: Team) -> None:
    rows = [
        CANONICAL,
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "4"},
        {"prompt": USER + FOUR, "chosen": FOUR, "rejected": FIVE},
        {"prompt": "What is 2+2?", "chosen": [{"role": "user", "content": "x"}], "rejected": "5"},
    ]
    refused = team.editor.upload("pairs.jsonl", jsonl(rows))
    assert refused.status_code == 400
    detail = refused.json()["detail"]
    assert "line 2: chosen and rejected are the same answer" in detail
    assert "line 3: the prompt ends with an assistant turn" in detail
    assert 'line 4: "chosen" must hold assistant turns only' in detail
    kept = team.editor.upload("pairs.jsonl", jsonl(rows), on_error="keep_valid")
    assert kept.status_code == 201 and kept.json()["num_rows"] == 1


def test_the_statistics_compare_chosen_and_rejected_lengths(team: Team) -> None:
    rows = [
        {"prompt": f"q{i}", "chosen": "a long and helpful answer", "rejected": "no"}
        for i in range(3)
    ] + [{"prompt": "q", "chosen": "ok", "rejected": "a much longer rejected answer"}]
    response = team.editor.upload("bias.jsonl", jsonl(rows))
    assert response.status_code == 201, response.text
    dataset_id = response.json()["id"]
    stats = team.editor.get(f"/api/v1/datasets/{dataset_id}/stats").json()["stats"]["preference"]
    assert stats["chosen_longer_rate"] == 0.75 and stats["rejected_longer_rate"] == 0.25
    assert stats["chosen_mean_chars"] > stats["rejected_mean_chars"]
    sign_in(team.editor)
    page = team.editor.client.get(f"/datasets/{dataset_id}", headers=HTML)
    assert page.status_code == 200 and "a length bias" in page.text


def test_the_model_view_shows_both_answers_with_only_their_tokens_trained() -> None:
    from workers.dataprep.preview import model_view
    from workers.engine.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(
        ["What is 2+2?", "It is 4.", "5"] * 20, vocab_size=300, model_max_length=128
    )
    view = model_view(tokenizer=tokenizer, rows=[CANONICAL], schema="preference", max_length=128)
    chosen, rejected = view["rows"]
    assert view["summary"]["sampled_rows"] == 2 and view["summary"]["answers_per_row"] == 2
    assert (chosen["index"], chosen["answer"]) == (0, "chosen")
    assert (rejected["index"], rejected["answer"]) == (0, "rejected")
    for row, answer in ((chosen, "It is 4."), (rejected, "5")):
        trained = "".join(t["text"] for t in row["tokens"] if t["loss"])
        assert trained.startswith(answer) and "2+2" not in trained
