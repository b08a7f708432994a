"""Named-entity data and runs through the API: CoNLL (.conll, and .txt by its content), JSONL
tokens + tags and JSONL text + spans become `token_classification` rows with entity statistics
per type; broken tags and spans are refused by line; a run trains a tiny scratch model through
the real worker task and its page shows the entity report; a registered entity model is
evaluated with seqeval's figures."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from seqeval import metrics as seqeval

from tests.conftest import Persona, Team
from tests.signed_in import HTML, sign_in

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ner"


def upload(persona: Persona, filename: str, content: bytes, **form: str) -> Any:
    return persona.post(
        "/api/v1/datasets", files={"file": (filename, io.BytesIO(content))}, data=form
    )


def canonical_rows(persona: Persona, dataset_id: int) -> list[dict[str, Any]]:
    response = persona.get(f"/api/v1/datasets/{dataset_id}/download?kind=canonical")
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def stats_of(persona: Persona, dataset_id: int) -> dict[str, Any]:
    response = persona.get(f"/api/v1/datasets/{dataset_id}/stats")
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.parametrize("filename", ["en.conll", "en.txt"])
def test_a_conll_file_becomes_entity_rows_with_statistics_per_type(
    team: Team, filename: str
) -> None:
    content = (FIXTURES / "en.conll").read_bytes()
    response = upload(team.editor, filename, content)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "token_classification" and body["num_rows"] == 12
    rows = canonical_rows(team.editor, body["id"])
    assert rows[1] == {
        "text": "Peter Blackburn",
        "entities": [{"start": 0, "end": 15, "label": "PER"}],
    }
    stats = stats_of(team.viewer, body["id"])
    assert stats["schema"] == "token_classification"
    types = stats["stats"]["entity_types"]
    assert {k: v["entities"] for k, v in types.items()} == {
        "LOC": 10,
        "PER": 7,
        "MISC": 5,
        "ORG": 4,
    }
    assert types["ORG"]["rows"] == 4 and stats["stats"]["entities"]["total"] == 26
    sign_in(team.viewer)
    page = team.viewer.client.get(f"/datasets/{body['id']}", headers=HTML).text
    assert 'data-testid="entity-types"' in page and "26 in all" in page


def test_prose_in_a_txt_file_stays_text() -> None:
    from app.services.datasets.formats import looks_like_conll

    assert not looks_like_conll(b"Once upon a time\nthere was a B-movie\n")
    assert not looks_like_conll(b"EU O\nrejects O\n")  # every tag O: nothing says entities
    assert looks_like_conll(b"-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")


def test_tokens_with_bioes_tags_and_chinese_spans_become_the_same_kind_of_rows(
    team: Team,
) -> None:
    bioes = upload(team.editor, "en_bioes.jsonl", (FIXTURES / "en_bioes.jsonl").read_bytes())
    assert bioes.status_code == 201, bioes.text
    assert bioes.json()["detection"]["column_map"] == {"tokens": "tokens", "tags": "tags"}
    conll = upload(team.editor, "en.conll", (FIXTURES / "en.conll").read_bytes())
    # The BIOES rows are the CoNLL file's first six sentences: the same spans.
    assert (
        canonical_rows(team.editor, bioes.json()["id"])
        == (canonical_rows(team.editor, conll.json()["id"])[:6])
    )
    spans = (FIXTURES / "zh_spans.jsonl").read_bytes()
    chinese = upload(team.editor, "zh.jsonl", spans)
    assert chinese.status_code == 201, chinese.text
    assert chinese.json()["format"] == "token_classification"
    assert canonical_rows(team.editor, chinese.json()["id"]) == [
        json.loads(line) for line in spans.decode().splitlines()
    ]
    stats = stats_of(team.editor, chinese.json()["id"])["stats"]
    assert stats["entity_types"]["ORG"] == {"entities": 6, "rows": 6, "mean_chars": 3.3}
    assert stats["entities"]["rows_without"] == 1 and stats["scripts"] == {"Han": 12}


def test_broken_tags_and_spans_are_refused_by_line_and_keep_valid_keeps_the_rest(
    team: Team,
) -> None:
    conll = b"EU B-ORG\nrejects O\n\nPeter O\nBlackburn I-PER\n\nLondon\n\nParis B-LOC\n"
    refused = upload(team.editor, "bad.conll", conll)
    assert refused.status_code == 400
    detail = refused.json()["detail"]
    assert "line 4: tag 2 ('I-PER') follows 'O': an entity must begin with B-PER (line 5)" in (
        detail
    )
    assert "line 7: expected a token and its tag separated by whitespace" in detail
    assert "nothing was stored" in detail
    kept = upload(team.editor, "bad.conll", conll, on_error="keep_valid")
    assert kept.status_code == 201, kept.text
    assert [r["text"] for r in canonical_rows(team.editor, kept.json()["id"])] == [
        "EU rejects",
        "Paris",
    ]

    rows = [
        {"text": "北京大学", "entities": [{"start": 0, "end": 2, "label": "LOC"}]},
        {"text": "北京大学", "entities": [{"start": 2, "end": 9, "label": "ORG"}]},
        {"text": "北京大学", "entities": [{"start": 0, "end": 4, "label": "ORG"},
                                      {"start": 0, "end": 2, "label": "LOC"}]},
        {"tokens": ["a"], "tags": ["B-X"], "text": "x"},
    ]  # fmt: skip
    spans = upload(team.editor, "spans.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    assert spans.status_code == 400
    detail = spans.json()["detail"]
    assert "line 2: entity 1 (ORG 2-9) is out of range: the text has 4 characters" in detail
    assert "line 3: entities 1 and 2 overlap (LOC 0-2, ORG 0-4)" in detail
    assert 'line 4: missing field: "entities"' in detail


def test_integer_tag_ids_are_refused_with_what_they_need(team: Team) -> None:
    row = {"tokens": ["EU", "rejects"], "ner_tags": [3, 0]}
    refused = upload(team.editor, "ids.jsonl", json.dumps(row).encode())
    assert refused.status_code == 400
    assert "integer tag ids need their names" in refused.json()["detail"]


# --- a run --------------------------------------------------------------------------------------


def test_an_entity_run_trains_through_the_worker_and_its_page_shows_the_entity_report(
    team: Team,
) -> None:
    from workers.tasks import train_run

    dataset = upload(team.editor, "zh.jsonl", (FIXTURES / "zh_spans.jsonl").read_bytes())
    assert dataset.status_code == 201, dataset.text
    launched = team.editor.post(
        "/api/v1/runs",
        json={
            "dataset_id": dataset.json()["id"],
            "base_model": "scratch-nano",
            "config": {
                "max_steps": 3,
                "batch_size": 4,
                "block_size": 32,
                "eval_split": 0.25,
                "label_alignment": "all",
            },
        },
    )
    assert launched.status_code == 201, launched.text
    run_id = launched.json()["id"]
    assert launched.json()["config"]["label_alignment"] == "all"
    train_run.apply(args=[run_id])
    run = team.viewer.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "succeeded", run.get("error")
    versions = [
        v for m in team.viewer.get("/api/v1/models").json() for v in m["versions"]
        if v.get("run_id") == run_id
    ]  # fmt: skip
    assert len(versions) == 1

    sign_in(team.viewer)
    page = team.viewer.client.get(f"/runs/{run_id}", headers=HTML)
    assert page.status_code == 200
    section = page.text.split('data-testid="entity-report"')[1].split("</section>")[0]
    assert "F1 (micro)" in section and "Token accuracy" in section
    assert "Confusion per word" in section
    assert "<th>O</th>" in section


def test_label_alignment_is_refused_for_a_run_that_is_not_an_entity_run(team: Team) -> None:
    from tests.conftest import text_jsonl

    dataset = team.editor.upload("text.jsonl", text_jsonl())
    assert dataset.status_code == 201, dataset.text
    refused = team.editor.post(
        "/api/v1/runs",
        json={"dataset_id": dataset.json()["id"], "config": {"label_alignment": "first"}},
    )
    assert refused.status_code == 400
    assert "label_alignment applies to token_classification runs" in refused.text
    wrong = team.editor.post(
        "/api/v1/runs",
        json={"dataset_id": dataset.json()["id"], "config": {"label_alignment": "middle"}},
    )
    assert wrong.status_code in (400, 422) and "label_alignment" in wrong.text


# --- evaluating a registered entity model -------------------------------------------------------


def test_a_registered_entity_model_is_evaluated_with_seqevals_figures(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.settings import get_settings
    from tests.serving.conftest import build_tiny_ner_model
    from workers.registry_tasks import evaluate_version

    imports = tmp_path / "imports"
    build_tiny_ner_model(imports / "ner")
    monkeypatch.setenv("LLMIDE_IMPORT_DIR", str(imports))
    get_settings.cache_clear()
    created = team.editor.post("/api/v1/models/import", json={"name": "ner", "path": "ner"})
    assert created.status_code == 201, created.text
    rows = [
        # The model tags 李明 PER and 北京 LOC and nothing else: right, right.
        {"text": "李明在北京", "entities": [{"start": 0, "end": 2, "label": "PER"},
                                        {"start": 3, "end": 5, "label": "LOC"}]},
        # An ORG it cannot know (missed), and its LOC inside (a false LOC).
        {"text": "北京大学", "entities": [{"start": 0, "end": 4, "label": "ORG"}]},
        # Nothing to find, nothing found.
        {"text": "在工作", "entities": []},
    ]  # fmt: skip
    dataset = upload(
        team.editor,
        "eval.jsonl",
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode(),
    )
    assert dataset.status_code == 201, dataset.text
    chat = team.editor.upload("chat.jsonl", '{"text": "hello"}\n')
    wrong = team.editor.post(
        f"/api/v1/model-versions/{created.json()['id']}/evaluations",
        json={"dataset_id": chat.json()["id"]},
    )
    assert wrong.status_code == 400 and "finds entities" in wrong.json()["detail"]

    queued = team.editor.post(
        f"/api/v1/model-versions/{created.json()['id']}/evaluations",
        json={"dataset_id": dataset.json()["id"]},
    )
    assert queued.status_code == 202, queued.text
    assert evaluate_version.apply(args=[queued.json()["id"]]).get() == "succeeded"
    done = team.viewer.get(f"/api/v1/evaluations/{queued.json()['id']}").json()
    metrics = done["metrics"]
    y_true = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-ORG", "I-ORG", "I-ORG", "I-ORG"],
              ["O", "O", "O"]]  # fmt: skip
    y_pred = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-LOC", "I-LOC", "O", "O"],
              ["O", "O", "O"]]  # fmt: skip
    assert metrics["f1_micro"] == pytest.approx(seqeval.f1_score(y_true, y_pred))
    assert metrics["precision_micro"] == pytest.approx(2 / 3)
    assert metrics["recall_micro"] == pytest.approx(2 / 3)
    assert metrics["f1_macro"] == pytest.approx(seqeval.f1_score(y_true, y_pred, average="macro"))
    assert metrics["token_accuracy"] == pytest.approx(seqeval.accuracy_score(y_true, y_pred))
    assert metrics["per_type"]["ORG"]["recall"] == 0.0 and metrics["eval_rows"] == 3
    assert metrics["confusion"]["labels"] == ["LOC", "ORG", "PER", "O"]
    assert metrics["confusion"]["matrix"][1] == [2, 0, 0, 2]  # 北京 of 北京大学 taken for LOC
    assert done["samples"][0] == {
        "prompt": "李明在北京",
        "output": "李明 PER, 北京 LOC",
        "expected": "李明 PER, 北京 LOC",
    }

    onnx = team.editor.post(
        f"/api/v1/model-versions/{created.json()['id']}/exports", json={"kind": "onnx"}
    )
    assert onnx.status_code == 400 and "entity (token classification) model" in onnx.text

    sign_in(team.viewer)
    page = team.viewer.client.get(f"/models/versions/{created.json()['id']}", headers=HTML).text
    assert "Micro F1" in page and "entity types" in page
    assert 'data-testid="entity-confusion"' in page


def test_the_model_view_of_chinese_entities_shows_them_highlighted_with_each_tokens_tag(
    team: Team,
) -> None:
    from workers.prep_tasks import compute_model_view

    dataset = upload(team.editor, "zh.jsonl", (FIXTURES / "zh_spans.jsonl").read_bytes())
    dataset_id = dataset.json()["id"]
    (version,) = team.editor.get(f"/api/v1/datasets/{dataset_id}/versions").json()
    url = f"/api/v1/datasets/{dataset_id}/versions/{version['id']}/model-view"
    # The page's own settings (it offers no vocabulary size: the default one).
    settings = {"tokenizer": "scratch", "max_length": 32, "detail_rows": 2}
    started = team.viewer.post(url, json=settings)
    assert started.status_code == 202, started.text
    payload = {"key": started.json()["key"], "version_id": version["id"]}
    payload["settings"] = {**settings, "chat_template": True, "sample_rows": 500}
    assert compute_model_view(payload) == "ready"
    state = team.viewer.get(url, params=settings).json()
    first = state["result"]["rows"][0]
    assert first["segments"] == [
        {"text": "李明", "label": "PER"},
        {"text": "在"},
        {"text": "北京大学", "label": "ORG"},
        {"text": "读书。"},
    ]
    # The scratch tokenizer (byte-level BPE trained on these rows) may merge characters; each
    # token carries the tag of the character it starts in, and 李 starts the PER entity.
    tags = [t["tag"] for t in first["token_tags"] if t["tag"] is not None]
    assert tags[0] == "B-PER" and "B-ORG" in tags
    assert not any("template" in w["code"] for w in state["result"]["warnings"])

    sign_in(team.viewer)
    page = team.viewer.client.get(
        f"/datasets/{dataset_id}/versions/{version['id']}/model-view",
        params=settings,
        headers=HTML,
    )
    assert page.status_code == 200
    assert 'data-testid="model-view-entities"' in page.text
    assert '<mark class="entity" data-label="ORG">北京大学' in page.text


def test_doccano_span_exports_are_read_as_entity_rows(team: Team) -> None:
    rows = [
        {"id": 1, "text": "王芳明天去上海出差。", "label": [[0, 2, "PER"], [5, 7, "LOC"]]},
        {"id": 2, "text": "今天天气很好。", "label": []},
    ]
    content = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode()
    response = upload(team.editor, "doccano.jsonl", content)
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "token_classification"
    assert response.json()["detection"]["column_map"] == {"text": "text", "entities": "label"}
    assert canonical_rows(team.editor, response.json()["id"]) == [
        {"text": "王芳明天去上海出差。", "entities": [{"start": 0, "end": 2, "label": "PER"},
                                              {"start": 5, "end": 7, "label": "LOC"}]},
        {"text": "今天天气很好。", "entities": []},
    ]  # fmt: skip
    # A text + label file with one label per row stays a classification set.
    plain = upload(team.editor, "cls.jsonl", b'{"text": "good", "label": "pos"}\n')
    assert plain.json()["format"] == "classification"
