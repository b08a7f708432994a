"""Preference runs through the product: API → worker task → registry. An SFT run's version is
the base of a DPO run; the DPO run streams its preference metrics and its version's lineage
shows both runs. Method knobs are used or refused by name."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Team, chat_jsonl, train_in_process, version_of_run
from tests.signed_in import HTML, sign_in

PAIRS = "".join(
    json.dumps(
        {
            "prompt": f"Say hello to friend {i}.",
            "chosen": f"Hello, friend {i}! Nice to see you.",
            "rejected": "Go away.",
        }
    )
    + "\n"
    for i in range(40)
)
SHORT = {"max_steps": 3, "block_size": 64, "batch_size": 4, "learning_rate": 1e-3}


def test_an_sft_version_is_tuned_with_dpo_and_the_lineage_shows_both_runs(team: Team) -> None:
    chat = team.editor.upload("chat.jsonl", chat_jsonl(40)).json()["id"]
    sft = team.editor.post(
        "/api/v1/runs",
        json={
            "dataset_id": chat,
            "base_model": "scratch-nano",
            "config": {**SHORT, "method": "full"},
        },
    )
    assert sft.status_code == 201, sft.text
    assert train_in_process(sft.json()["id"]) == "succeeded"
    sft_version = version_of_run(sft.json()["id"])

    pairs = team.editor.upload("pairs.jsonl", PAIRS).json()
    assert pairs["format"] == "preference"
    dpo = team.editor.post(
        "/api/v1/runs",
        json={
            "dataset_id": pairs["id"],
            "base_model": sft_version["name"],
            "config": {**SHORT, "method": "full", "beta": 0.2},
        },
    )
    assert dpo.status_code == 201, dpo.text
    assert dpo.json()["config"]["task_type"] in ("auto", "dpo")
    assert train_in_process(dpo.json()["id"]) == "succeeded"

    points = team.editor.get(f"/api/v1/runs/{dpo.json()['id']}/metrics").json()
    names = {name for point in points for name in point["values"]}
    assert {"rewards_margins", "rewards_accuracies", "eval_rewards_margins"} <= names

    dpo_version = version_of_run(dpo.json()["id"])
    lineage = dpo_version["lineage"]
    assert lineage["base_version_id"] == sft_version["id"]
    assert lineage["base_run_id"] == sft.json()["id"] and lineage["run_id"] == dpo.json()["id"]
    assert lineage["config"]["beta"] == 0.2

    sign_in(team.editor)
    page = team.editor.client.get(f"/models/versions/{dpo_version['id']}", headers=HTML).text
    assert f'href="/runs/{sft.json()["id"]}"' in page and sft_version["name"] in page
    form = team.editor.client.get("/runs/new", headers=HTML).text
    assert f'<option value="{sft_version["name"]}"' in form  # a version offered as a base
    run_page = team.editor.client.get(f"/runs/{dpo.json()['id']}", headers=HTML).text
    assert 'data-chart="rewards_margins"' in run_page
    assert 'data-chart="eval_rewards_accuracies"' in run_page


@pytest.mark.parametrize(
    ("dataset", "config", "param"),
    [
        ("chat", {"beta": 0.3}, "beta"),  # an sft run has no beta
        ("pairs", {"task_type": "orpo", "dpo_loss": "ipo"}, "dpo_loss"),
        ("pairs", {"task_type": "dpo", "simpo_gamma": 1.0}, "simpo_gamma"),
        ("pairs", {"task_type": "sft"}, "task_type"),  # pairs are not conversations
        ("pairs", {"task_type": "kto", "batch_size": 1}, "batch_size"),
    ],
)
def test_method_knobs_are_used_or_refused_by_name(
    team: Team, dataset: str, config: dict, param: str
) -> None:
    content = chat_jsonl(10) if dataset == "chat" else PAIRS
    dataset_id = team.editor.upload(f"{dataset}.jsonl", content).json()["id"]
    response = team.editor.post(
        "/api/v1/runs",
        json={"dataset_id": dataset_id, "base_model": "scratch-nano", "config": config},
    )
    assert response.status_code in (400, 422), response.text
    assert param in response.text


def test_the_launch_estimate_counts_a_full_dpo_runs_frozen_reference_and_not_a_loras() -> None:
    from app.services.estimate import estimate

    shape = dict(
        base_model="scratch-tiny",
        batch_size=8,
        block_size=128,
        device_bytes=None,
        device_label="test",
    )
    sft = estimate(**shape, task="sft")  # type: ignore[arg-type]
    dpo = estimate(**shape, task="dpo")  # type: ignore[arg-type]
    lora = estimate(**shape, task="dpo", lora=True)  # type: ignore[arg-type]
    orpo = estimate(**shape, task="orpo")  # type: ignore[arg-type]
    assert dpo.reference_bytes == dpo.weights_bytes and sft.reference_bytes == 0
    assert lora.reference_bytes == 0 and orpo.reference_bytes == 0  # adapters off / no reference
    # chosen and rejected go through the model together: twice the activations of a batch
    assert orpo.activations_bytes == 2 * sft.activations_bytes  # type: ignore[operator]
    assert dpo.total_bytes == orpo.total_bytes + dpo.weights_bytes  # type: ignore[operator]
