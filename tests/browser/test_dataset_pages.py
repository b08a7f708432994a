"""The dataset pages without a browser: upload options, statistics plots, searchable rows,
and a chunked upload driven with the browser's cookie (as static/js/upload.js does)."""

from __future__ import annotations

import io
import json

from fastapi.testclient import TestClient

from tests.browser.test_page_routes import HTML, _sign_in
from tests.conftest import Team


def test_dataset_page_plots_statistics_and_searches_chinese_rows(
    client: TestClient, team: Team
) -> None:
    rows = [{"text": f"第{i}句：天气很好", "label": "zh"} for i in range(12)]
    rows.append({"text": "机器学习很有趣", "label": "zh"})
    rows.append({"text": "", "label": "en"})  # rejected, kept apart
    content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    token = _sign_in(client, team.editor)
    uploaded = client.post(
        "/datasets",
        headers={**HTML, "X-CSRF-Token": token},
        data={"csrf_token": token, "on_error": "keep_valid", "name": "zh"},
        files={"file": ("zh.jsonl", io.BytesIO(content))},
        follow_redirects=False,
    )
    assert uploaded.status_code == 303, uploaded.text
    page = client.get(uploaded.headers["location"], headers=HTML)
    assert page.status_code == 200
    for marker in (
        'data-testid="chars-histogram"',
        'data-testid="labels-chart"',
        'data-testid="scripts-chart"',
        'data-testid="rejected-download"',
        "line 14: &#34;text&#34; is empty",
        "Row 10",
    ):
        assert marker in page.text, marker
    dataset_id = uploaded.headers["location"].rsplit("/", 1)[-1]
    found = client.get(
        f"/datasets/{dataset_id}/rows", params={"q": "学习"}, headers={**HTML, "HX-Request": "true"}
    )
    assert found.status_code == 200
    assert "机器学习很有趣" in found.text and "天气很好" not in found.text
    assert "Row 13" in found.text


def test_a_browser_session_sends_a_chunked_upload(client: TestClient, team: Team) -> None:
    token = _sign_in(client, team.editor)
    data = ("text\n" + "".join(f"document number {i}\n" for i in range(200))).encode()
    headers = {"X-CSRF-Token": token}
    started = client.post(
        "/api/v1/uploads", json={"filename": "docs.csv", "total_size": len(data)}, headers=headers
    )
    assert started.status_code == 201, started.text
    url = f"/api/v1/uploads/{started.json()['id']}"
    for start in range(0, len(data), 1000):
        end = min(start + 1000, len(data))
        sent = client.put(
            url,
            content=data[start:end],
            headers={**headers, "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"},
        )
        assert sent.status_code == 200, sent.text
    done = client.post(f"{url}/complete", data={"name": "docs"}, headers=headers)
    assert done.status_code == 201, done.text
    assert done.json()["num_rows"] == 200 and done.json()["format"] == "text"
    without_csrf = client.post("/api/v1/uploads", json={"filename": "docs.csv", "total_size": 10})
    assert without_csrf.status_code == 403
