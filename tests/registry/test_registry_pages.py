"""The registry in the browser: a version page with stage buttons by role, tags, history and
jobs; the run page's Register button; the model page comparing versions on one evaluation."""

from __future__ import annotations

from pathlib import Path

from tests.browser.test_page_routes import HTML, _sign_in
from tests.conftest import Team
from tests.registry.conftest import dummy_run_with_version


def test_a_version_page_offers_the_moves_the_role_allows_and_keeps_its_history(
    team: Team, installation: Path
) -> None:
    from app.db.models import Evaluation
    from app.db.session import session_scope

    run_id, version = dummy_run_with_version(team, installation)
    client = team.editor.client
    token = _sign_in(client, team.editor)
    page = client.get(f"/models/versions/{version['id']}", headers=HTML)
    assert page.status_code == 200
    assert 'data-testid="stage-staging"' in page.text
    assert 'data-testid="stage-production"' not in page.text  # the owner's move

    moved = client.post(
        f"/models/versions/{version['id']}/stage",
        headers=HTML,
        data={"stage": "staging", "reason": "looks good", "csrf_token": token},
        follow_redirects=False,
    )
    assert moved.status_code == 303
    tagged = client.post(
        f"/models/versions/{version['id']}/tags",
        headers=HTML,
        data={"tags": "candidate, lang=en", "csrf_token": token},
        follow_redirects=False,
    )
    assert tagged.status_code == 303
    bad = client.post(
        f"/models/versions/{version['id']}/tags",
        headers=HTML,
        data={"tags": "no spaces allowed", "csrf_token": token},
    )
    assert bad.status_code == 400 and "must be 1-40 letters" in bad.text

    # A queued export: htmx polls just the jobs block; the download link works with the cookie.
    queued = team.editor.post(
        f"/api/v1/model-versions/{version['id']}/exports", json={"kind": "onnx"}
    )
    assert queued.status_code == 202
    fragment = client.get(
        f"/models/versions/{version['id']}", headers={**HTML, "HX-Request": "true"}
    )
    assert fragment.text.lstrip().startswith('<div id="jobs"') and "every 2s" in fragment.text
    assert "<html" not in fragment.text
    download = client.get(f"/api/v1/model-versions/{version['id']}/download")
    assert download.status_code == 200 and download.content.startswith(b"PK")

    # The run page registers a non-final checkpoint with one button.
    run_page = client.get(f"/runs/{run_id}", headers=HTML)
    assert 'data-testid="register-2"' in run_page.text
    checkpoint = team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()[0]
    registered = client.post(
        f"/runs/{run_id}/checkpoints/{checkpoint['id']}/register",
        headers=HTML,
        data={"csrf_token": token},
        follow_redirects=False,
    )
    assert registered.status_code == 303 and registered.headers["location"].startswith(
        "/models/versions/"
    )

    with session_scope() as session:
        session.add(
            Evaluation(
                workspace_id=team.owner.workspace_id,
                model_version_id=version["id"],
                dataset_sha256="f" * 64,
                status="succeeded",
                metrics={"perplexity": 12.5},
            )
        )
    owner = team.owner.client
    _sign_in(owner, team.owner)
    page = owner.get(f"/models/versions/{version['id']}", headers=HTML)
    assert 'data-testid="stage-production"' in page.text
    assert "looks good" in page.text and "editor@example.com" in page.text
    assert "candidate" in page.text and "12.5" in page.text
    model_page = owner.get(f"/models?model={version['registered_model_id']}", headers=HTML)
    assert 'data-testid="eval-compare"' in model_page.text and "12.5" in model_page.text


def test_the_registry_page_imports_an_upload_and_says_why_a_pickle_is_refused(
    team: Team, installation: Path
) -> None:
    import io

    client = team.editor.client
    token = _sign_in(client, team.editor)
    assert "Import a model" in client.get("/models", headers=HTML).text
    gguf = b"GGUF\x03\x00\x00\x00" + b"\x00" * 16
    imported = client.post(
        "/models/import",
        headers=HTML,
        data={"name": "tiny", "csrf_token": token},
        files={"file": ("tiny.gguf", io.BytesIO(gguf))},
        follow_redirects=False,
    )
    assert imported.status_code == 303, imported.text
    assert imported.headers["location"].startswith("/models/versions/")
    refused = client.post(
        "/models/import",
        headers=HTML,
        data={"name": "old", "csrf_token": token},
        files={"file": ("pytorch_model.bin", io.BytesIO(b"\x80\x04"))},
    )
    assert refused.status_code == 400
    assert 'data-testid="import-error"' in refused.text and "pickle weights" in refused.text
    assert [m["name"] for m in team.viewer.get("/api/v1/models").json()] == ["tiny"]
