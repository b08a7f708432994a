"""Registering checkpoints as numbered versions, stages with roles and history, the production
gate, and tags."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.conftest import Team
from tests.registry.conftest import dummy_run_with_version


def put(persona, url: str, body: dict):  # type: ignore[no-untyped-def]
    return persona.client.put(url, headers=persona.headers, json=body)


def stage(persona, version_id: int, to: str):  # type: ignore[no-untyped-def]
    return persona.post(f"/api/v1/model-versions/{version_id}/stage", json={"stage": to})


def test_a_non_final_checkpoint_registers_as_the_next_version_with_lineage_and_hash(
    team: Team, installation: Path
) -> None:
    run_id, final = dummy_run_with_version(team, installation)
    assert final["version"] == 1 and final["stage"] == "none"
    assert final["lineage"]["is_final"] is True
    assert final["code_version"]
    expected = hashlib.sha256(b"model.safetensors\0weights of final").hexdigest()
    assert final["content_sha256"] == expected and final["size_bytes"] == len(b"weights of final")
    checkpoints = team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()
    early = next(c for c in checkpoints if c["step"] == 2)

    assert (
        team.viewer.post("/api/v1/models/versions", json={"checkpoint_id": early["id"]}).status_code
        == 403
    )
    assert (
        team.outsider.post(
            "/api/v1/models/versions", json={"checkpoint_id": early["id"]}
        ).status_code
        == 404
    )
    created = team.editor.post("/api/v1/models/versions", json={"checkpoint_id": early["id"]})
    assert created.status_code == 201, created.text
    version = created.json()
    assert version["version"] == 2 and version["checkpoint_id"] == early["id"]
    assert version["lineage"]["step"] == 2 and version["lineage"]["is_final"] is False
    assert version["lineage"]["dataset_sha256"] and version["content_sha256"] != expected
    again = team.editor.post("/api/v1/models/versions", json={"checkpoint_id": early["id"]})
    assert again.status_code == 200 and again.json()["id"] == version["id"]


def test_a_checkpoint_deleted_from_disk_cannot_be_registered(
    team: Team, installation: Path
) -> None:
    run_id, _ = dummy_run_with_version(team, installation)
    early = team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()[0]
    target = installation / "artifacts" / "runs" / str(run_id) / "checkpoints" / "checkpoint-2"
    for file in target.iterdir():
        file.unlink()
    target.rmdir()
    refused = team.editor.post("/api/v1/models/versions", json={"checkpoint_id": early["id"]})
    assert refused.status_code == 409 and "no longer on disk" in refused.json()["detail"]
    assert len(team.viewer.get("/api/v1/models").json()[0]["versions"]) == 1


def test_stage_moves_follow_roles_and_one_production_version_is_kept_with_history(
    team: Team, installation: Path, backend: str
) -> None:
    run_id, v1 = dummy_run_with_version(team, installation)
    early = team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()[0]
    v2 = team.editor.post("/api/v1/models/versions", json={"checkpoint_id": early["id"]}).json()

    assert stage(team.viewer, v1["id"], "staging").status_code == 403
    assert stage(team.outsider, v1["id"], "staging").status_code == 404
    assert stage(team.editor, v1["id"], "shipping").status_code == 400
    assert stage(team.editor, v1["id"], "staging").json()["stage"] == "staging"
    refused = stage(team.editor, v1["id"], "production")
    assert refused.status_code == 403 and "only an owner" in refused.json()["detail"]
    assert stage(team.owner, v1["id"], "production").json()["stage"] == "production"
    # An editor may not take it out of production either.
    assert stage(team.editor, v1["id"], "archived").status_code == 403

    assert stage(team.owner, v2["id"], "production").json()["stage"] == "production"
    stages = {
        v["version"]: v["stage"] for v in team.viewer.get("/api/v1/models").json()[0]["versions"]
    }
    assert stages == {1: "archived", 2: "production"}

    history = team.viewer.get(f"/api/v1/model-versions/{v1['id']}/history").json()
    moves = [(h["from_stage"], h["to_stage"], h["user_email"]) for h in history]
    assert moves == [
        ("none", "staging", "editor@example.com"),
        ("staging", "production", "owner@example.com"),
        ("production", "archived", "owner@example.com"),
    ]
    assert history[-1]["reason"] == "replaced by v2"
    # Moving to the stage it is in records nothing.
    stage(team.owner, v2["id"], "production")
    assert len(team.viewer.get(f"/api/v1/model-versions/{v2['id']}/history").json()) == 1


def test_production_needs_a_passing_evaluation_when_the_server_sets_a_gate(
    team: Team, installation: Path
) -> None:
    from app.core.settings import get_settings
    from app.db.models import Evaluation
    from app.db.session import session_scope

    _, version = dummy_run_with_version(team, installation)
    os.environ["LLMIDE_PRODUCTION_GATE"] = "perplexity<=40"
    get_settings.cache_clear()

    refused = stage(team.owner, version["id"], "production")
    assert refused.status_code == 409
    assert "needs a finished evaluation with perplexity <= 40" in refused.json()["detail"]

    def evaluated(perplexity: float) -> None:
        with session_scope() as session:
            session.add(
                Evaluation(
                    workspace_id=team.owner.workspace_id,
                    model_version_id=version["id"],
                    dataset_sha256="0" * 64,
                    options={},
                    status="succeeded",
                    progress=1.0,
                    metrics={"perplexity": perplexity},
                    samples=[],
                )
            )

    evaluated(80.0)
    refused = stage(team.owner, version["id"], "production")
    assert refused.status_code == 409 and "perplexity = 80" in refused.json()["detail"]
    evaluated(12.5)
    assert stage(team.owner, version["id"], "production").json()["stage"] == "production"


def test_editors_edit_tags_and_bad_tags_are_refused(team: Team, installation: Path) -> None:
    _, version = dummy_run_with_version(team, installation)
    url = f"/api/v1/model-versions/{version['id']}/tags"
    assert put(team.viewer, url, {"tags": ["x"]}).status_code == 403
    assert put(team.editor, url, {"tags": ["bad tag!"]}).status_code == 400
    saved = put(team.editor, url, {"tags": ["candidate", "lang=en", "candidate"]})
    assert saved.json()["tags"] == ["candidate", "lang=en"]
    assert team.viewer.get(f"/api/v1/model-versions/{version['id']}").json()["tags"] == [
        "candidate",
        "lang=en",
    ]


def test_a_viewer_is_refused_a_change_whatever_the_id_and_an_outsider_finds_no_version(
    team: Team, installation: Path
) -> None:
    """registry/access.py: the role is checked before the lookup, and another workspace's
    version answers like an unknown one, so ids cannot be probed."""
    _, version = dummy_run_with_version(team, installation)
    unknown = 2**31 - 1
    for version_id in (version["id"], unknown):
        assert stage(team.viewer, version_id, "staging").status_code == 403
        tagged = put(team.viewer, f"/api/v1/model-versions/{version_id}/tags", {"tags": ["a"]})
        assert tagged.status_code == 403
        exported = team.viewer.post(
            f"/api/v1/model-versions/{version_id}/exports", json={"kind": "onnx"}
        )
        assert exported.status_code == 403
    assert team.outsider.get(f"/api/v1/model-versions/{version['id']}").status_code == 404
    assert stage(team.outsider, version["id"], "staging").status_code == 404
    assert stage(team.editor, unknown, "staging").status_code == 404
    assert team.viewer.get(f"/api/v1/model-versions/{version['id']}").status_code == 200
