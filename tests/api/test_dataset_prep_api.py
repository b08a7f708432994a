"""Preparing a dataset version through the API: the task runs in this process against the real
database and artifact store (as a `cpu` worker would run it), then the API shows the result."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.db.models import DatasetVersion
from app.db.session import session_scope
from tests.conftest import Team, chat_jsonl
from workers.prep_tasks import compute_model_view, prepare

ROWS = [
    {"text": "<p>Hello   <b>world</b></p>"},
    {"text": "Hello world"},  # a duplicate once the markup is gone
    {"text": "  你好，\u3000世界  "},
    {"text": "<div>第二段</div>"},
    {"text": "The cat sat on the mat."},
    {"text": "The cat sat on the mat."},
    {"text": "A dog ran in the park."},
    {"text": "We like to read books."},
]
RECIPE = {
    "steps": [{"step": "strip_html"}, {"step": "whitespace"}, {"step": "exact_dedup"}],
    "split": {"validation": 0.2, "seed": 3},
    "tokenize": {"tokenizer": "scratch", "vocab_size": 300, "max_length": 16},
}


def upload(team: Team, rows: list[dict[str, Any]] | str, name: str = "data.jsonl") -> int:
    content = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
    response = team.editor.upload(name, content)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def version_ids(dataset_id: int) -> list[int]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(DatasetVersion.id)
                .where(DatasetVersion.dataset_id == dataset_id)
                .order_by(DatasetVersion.version)
            )
        )


def prepare_via_api(team: Team, dataset_id: int, parent: int, recipe: dict[str, Any]) -> int:
    response = team.editor.post(
        f"/api/v1/datasets/{dataset_id}/versions",
        json={"parent_version_id": parent, "recipe": recipe},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "preparing" and body["parent_id"] == parent
    return int(body["id"])


def test_prepare_makes_a_new_immutable_version_with_recipe_report_and_split(
    team: Team, installation: Path, backend: str
) -> None:
    dataset_id = upload(team, ROWS)
    (v1,) = version_ids(dataset_id)
    v2 = prepare_via_api(team, dataset_id, v1, RECIPE)
    assert prepare(v2) == "ready"

    version = team.viewer.get(f"/api/v1/datasets/{dataset_id}/versions/{v2}").json()
    assert version["status"] == "ready" and version["progress"] == 1.0
    assert version["version"] == 2 and version["parent_id"] == v1 and version["schema"] == "text"
    # The exact settings that ran, defaults included, are recorded.
    assert version["recipe"]["steps"] == [
        {"step": "strip_html"},
        {"step": "whitespace", "keep_newlines": True},
        {"step": "exact_dedup"},
    ]
    assert version["recipe"]["split"]["seed"] == 3 and version["recipe"]["tokenize"]["packing"]
    report = version["report"]
    assert report["rows_in"] == 8 and report["rows_out"] == 6 == version["num_rows"]
    assert [(s["step"], s["removed"], s["changed"]) for s in report["steps"]] == [
        ("strip_html", 0, 2),
        ("whitespace", 0, 3),  # "Hello   world", the Chinese row, "第二段\n"
        ("exact_dedup", 2, 0),
    ]
    assert report["split"] == {"train": 5, "validation": 1, "test": 0}

    stored = installation / "artifacts" / f"datasets/versions/{version['sha256']}.jsonl"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == version["sha256"]
    rows = [json.loads(line) for line in stored.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == [
        "Hello world",
        "你好， 世界",
        "第二段",
        "The cat sat on the mat.",
        "A dog ran in the park.",
        "We like to read books.",
    ]
    assert {r["split"] for r in rows} == {"train", "validation"}
    assert not report["tokenized"]["cache_hit"] and report["tokenized"]["packing"]

    # The same recipe on the same parent gives the same content: the tokenization is reused.
    v3 = prepare_via_api(team, dataset_id, v1, RECIPE)
    assert prepare(v3) == "ready"
    again = team.viewer.get(f"/api/v1/datasets/{dataset_id}/versions/{v3}").json()
    assert again["sha256"] == version["sha256"] and again["version"] == 3
    assert again["report"]["tokenized"]["cache_hit"]
    assert again["report"]["tokenized"]["key"] == report["tokenized"]["key"]


def test_a_bad_recipe_is_refused_with_every_problem_named_and_nothing_recorded(
    team: Team,
) -> None:
    dataset_id = upload(team, ROWS)
    (v1,) = version_ids(dataset_id)
    response = team.editor.post(
        f"/api/v1/datasets/{dataset_id}/versions",
        json={
            "parent_version_id": v1,
            "recipe": {
                "steps": [{"step": "near_dedup", "threshold": 2}, {"step": "length_filter"}]
            },
        },
    )
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "steps.0.near_dedup.threshold" in detail and "needs min, max or both" in detail
    assert version_ids(dataset_id) == [v1]


def test_only_editors_prepare_and_other_workspaces_see_nothing(team: Team) -> None:
    dataset_id = upload(team, ROWS)
    (v1,) = version_ids(dataset_id)
    body = {"parent_version_id": v1, "recipe": RECIPE}
    url = f"/api/v1/datasets/{dataset_id}/versions"
    assert team.viewer.post(url, json=body).status_code == 403
    assert team.outsider.post(url, json=body).status_code == 404
    assert team.outsider.get(f"{url}/{v1}/model-view").status_code == 404
    other = upload(team, ROWS[:3], name="other.jsonl")
    # A version of another dataset is not a version of this one.
    assert team.editor.get(f"/api/v1/datasets/{other}/versions/{v1}/model-view").status_code == 404
    assert team.editor.post(f"/api/v1/datasets/{other}/versions", json=body).status_code == 404
    assert version_ids(dataset_id) == [v1]


def test_a_failing_preparation_records_the_reason_and_leaves_no_file(
    team: Team, installation: Path
) -> None:
    dataset_id = upload(team, ROWS)
    (v1,) = version_ids(dataset_id)
    v2 = prepare_via_api(team, dataset_id, v1, {"split": {"method": "column", "column": "fold"}})
    assert prepare(v2) == "failed"
    version = team.viewer.get(f"/api/v1/datasets/{dataset_id}/versions/{v2}").json()
    assert version["status"] == "failed"
    assert "row 1: column 'fold' is None" in version["error"]
    parent_sha = team.viewer.get(f"/api/v1/datasets/{dataset_id}/versions/{v1}").json()["sha256"]
    stored = list((installation / "artifacts" / "datasets" / "versions").iterdir())
    assert [path.name for path in stored] == [f"{parent_sha}.jsonl"]  # only the upload's file
    leftovers = list((installation / "artifacts" / "tmp").glob("*.jsonl"))
    assert leftovers == []


def test_model_view_shows_chat_rows_token_by_token_with_the_loss_mask(team: Team) -> None:
    dataset_id = upload(team, chat_jsonl(6), name="chat.jsonl")
    (v1,) = version_ids(dataset_id)
    url = f"/api/v1/datasets/{dataset_id}/versions/{v1}/model-view"
    settings = {"tokenizer": "scratch", "vocab_size": 300, "max_length": 24, "detail_rows": 2}
    assert team.viewer.get(url, params=settings).json()["status"] == "absent"
    started = team.viewer.post(url, json=settings)
    assert started.status_code == 202 and started.json()["status"] == "computing"
    assert team.viewer.get(url, params=settings).json()["status"] == "computing"

    assert (
        compute_model_view(
            {
                "key": started.json()["key"],
                "version_id": v1,
                "settings": {**settings, "chat_template": True, "sample_rows": 500},
            }
        )
        == "ready"
    )
    state = team.viewer.get(url, params=settings).json()
    assert state["status"] == "ready"
    result = state["result"]
    first = result["rows"][0]
    trained = "".join(t["text"] for t in first["tokens"] if t["loss"])
    masked = "".join(t["text"] for t in first["tokens"] if not t["loss"])
    assert trained == "0 plus one is 1.<|end|>\n"
    assert masked == "<|user|>\nwhat is 0 plus one?<|end|>\n<|assistant|>\n"
    assert [t["text"] for t in first["tokens"] if t["eos"]] == ["<|end|>", "<|end|>"]
    # Rows 10+ have longer numbers: at 24 tokens some are cut, and the warning says how many.
    codes = {w["code"]: w for w in result["warnings"]}
    assert result["summary"]["sampled_rows"] == 6
    assert set(codes) <= {"truncated", "missing_eos"}
    assert team.outsider.get(url, params=settings).status_code == 404
    bad = team.viewer.post(url, json={"max_length": 2})
    assert bad.status_code == 400 and "max_length" in bad.json()["detail"]
