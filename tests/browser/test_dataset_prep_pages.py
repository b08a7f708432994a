"""The dataset page's versions panel: the Prepare form queues a version with the steps in the
order chosen, progress shows while it is prepared, and the model view renders coloured tokens."""

from __future__ import annotations

import json
import re

from sqlalchemy import select

from app.db.models import DatasetVersion
from app.db.session import session_scope
from tests.browser.test_page_routes import HTML, _sign_in
from tests.conftest import Team, chat_jsonl
from workers.prep_tasks import compute_model_view, prepare

HX = {**HTML, "HX-Request": "true"}


def test_prepare_form_queues_a_version_with_steps_in_the_chosen_order_and_shows_progress(
    team: Team,
) -> None:
    rows = "".join(json.dumps({"text": f" <b>row {i % 3}</b> "}) + "\n" for i in range(6))
    dataset_id = team.editor.upload("rows.jsonl", rows).json()["id"]
    client = team.editor.client
    token = _sign_in(client, team.editor)
    panel = client.get(f"/datasets/{dataset_id}/versions-panel", headers=HX)
    assert panel.status_code == 200 and "Prepare a new version" in panel.text
    parent = re.search(r'name="parent_version_id"><option value="(\d+)"', panel.text).group(1)

    answer = client.post(
        f"/datasets/{dataset_id}/versions",
        headers={**HX, "X-CSRF-Token": token},
        data={
            "parent_version_id": parent,
            "step_exact_dedup": "on",
            "order_exact_dedup": "3",
            "step_whitespace": "on",
            "order_whitespace": "2",
            "step_strip_html": "on",
            "order_strip_html": "1",
            "split_method": "random",
            "split_validation": "0.5",
            "split_seed": "1",
            "tokenizer": "none",
        },
    )
    assert answer.status_code == 200 and "Preparation queued" in answer.text
    assert 'data-status="preparing"' in answer.text and 'hx-trigger="every 1s"' in answer.text
    with session_scope() as session:
        version = session.scalars(
            select(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset_id, DatasetVersion.version == 2
            )
        ).one()
        version_id = version.id
        assert [s["step"] for s in version.recipe["steps"]] == [
            "strip_html",
            "whitespace",
            "exact_dedup",
        ]
        assert version.recipe["split"]["validation"] == 0.5

    assert prepare(version_id) == "ready"
    table = client.get(f"/datasets/{dataset_id}/versions-panel?part=table", headers=HX)
    assert 'data-status="ready"' in table.text and "every 1s" not in table.text
    assert "exact_dedup: −3" in table.text  # "row 0", "row 1", "row 2" each kept once
    assert "1 / 2 / 0" in table.text  # train / validation / test: round(3 * 0.5) validate


def test_a_bad_form_is_answered_in_the_panel_and_viewers_cannot_prepare(team: Team) -> None:
    dataset_id = team.editor.upload("rows.jsonl", '{"text": "a"}\n').json()["id"]
    client = team.editor.client
    token = _sign_in(client, team.editor)
    with session_scope() as session:
        parent = session.scalars(
            select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset_id)
        ).one()
    bad = client.post(
        f"/datasets/{dataset_id}/versions",
        headers={**HX, "X-CSRF-Token": token},
        data={"parent_version_id": str(parent), "step_near_dedup": "on", "near_threshold": "3"},
    )
    assert bad.status_code == 200 and "steps.0.near_dedup.threshold" in bad.text
    token = _sign_in(client, team.viewer)
    refused = client.post(
        f"/datasets/{dataset_id}/versions",
        headers={**HTML, "X-CSRF-Token": token},
        data={"parent_version_id": str(parent), "step_nfkc": "on"},
    )
    assert refused.status_code == 403
    panel = client.get(f"/datasets/{dataset_id}/versions-panel", headers=HX)
    assert "Prepare a new version" not in panel.text


def test_model_view_panel_polls_while_computing_then_shows_coloured_tokens(team: Team) -> None:
    dataset_id = team.editor.upload("chat.jsonl", chat_jsonl(3)).json()["id"]
    with session_scope() as session:
        version_id = session.scalars(
            select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset_id)
        ).one()
    client = team.viewer.client
    token = _sign_in(client, team.viewer)
    url = f"/datasets/{dataset_id}/versions/{version_id}/model-view"
    started = client.post(
        url,
        headers={**HX, "X-CSRF-Token": token},
        data={"tokenizer": "scratch", "max_length": "64", "chat_template": "true"},
    )
    assert started.status_code == 200 and 'hx-trigger="every 1s"' in started.text
    assert "A worker is rendering" in started.text
    from app.core.prep_recipe import ModelViewSettings
    from app.services.datasets import prep as dataset_prep

    settings = ModelViewSettings(tokenizer="scratch", max_length=64)
    with session_scope() as session:
        version = session.get(DatasetVersion, version_id)
        view_key = dataset_prep.model_view_key(version, settings)
    assert (
        compute_model_view(
            {"key": view_key, "version_id": version_id, "settings": settings.model_dump()}
        )
        == "ready"
    )
    shown = client.get(url + "?tokenizer=scratch&max_length=64&chat_template=true", headers=HX)
    assert "every 1s" not in shown.text
    assert 'class="tok loss' in shown.text and 'class="tok special' in shown.text
    assert "tok special eos" in shown.text and "tok loss special eos" in shown.text
    assert 'data-testid="tokens-histogram"' in shown.text  # tokens per row, as a bar chart
