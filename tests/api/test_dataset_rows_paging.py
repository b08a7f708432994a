"""The dataset page's Previous/Next: links that htmx swaps in place and that work without it."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.browser.test_page_routes import HTML, _sign_in
from tests.conftest import Team, text_jsonl


def test_previous_and_next_are_links_to_the_page_with_an_htmx_swap_of_the_rows(
    client: TestClient, team: Team
) -> None:
    dataset_id = team.editor.upload("corpus.jsonl", text_jsonl(25)).json()["id"]
    _sign_in(client, team.viewer)
    first = client.get(f"/datasets/{dataset_id}", headers=HTML)
    assert first.status_code == 200
    following = re.search(
        r'<a class="btn" href="([^"]+)" hx-get="([^"]+)"[^>]*>Next</a>', first.text
    )
    assert following, "Next is a link"
    href, hx_get = following.groups()
    assert href == f"/datasets/{dataset_id}?q=&amp;offset=10"
    assert hx_get == f"/datasets/{dataset_id}/rows?q=&amp;offset=10"
    second = client.get(href.replace("&amp;", "&"), headers=HTML)  # no JavaScript: the page
    assert second.status_code == 200 and "<html" in second.text
    assert re.search(r'href="[^"]+offset=0"[^>]*>Previous</a>', second.text)
    rows = client.get(hx_get.replace("&amp;", "&"), headers={**HTML, "HX-Request": "true"})
    assert rows.status_code == 200 and "<html" not in rows.text and 'id="dataset-rows"' in rows.text
