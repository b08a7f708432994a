"""A batch too large for the GPU fails the run as out of memory, said so on the API and the page."""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx

from tests.e2e.test_full_path import PASSWORD
from tests.gpu.support import product, varied_text

# scratch-small, 512 sequences of 4096 tokens in fp32: the launch estimate puts activations and
# logits near 370 GiB, far beyond any single GPU sold today (an H200 has 141 GB).
BATCH, BLOCK = 512, 4096


def signed_in_page(base_url: str, path: str) -> str:
    """`path` as a browser signed in as the test's admin sees it."""
    with httpx.Client(base_url=base_url, timeout=30, headers={"Accept": "text/html"}) as browser:
        found = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/login").text)
        assert found
        form = {"email": "gpu@example.com", "password": PASSWORD, "csrf_token": found.group(1)}
        assert browser.post("/login", data=form).status_code == 303
        page = browser.get(path)
        assert page.status_code == 200, page.text[:300]
        return page.text


def test_a_batch_too_large_for_the_gpu_fails_as_out_of_memory_with_advice(
    tmp_path: Path,
) -> None:
    with product(tmp_path / "data") as app:
        # Enough distinct text for BATCH full blocks of BLOCK tokens (2.1M tokens; ~8 MB).
        dataset = app.upload("big.jsonl", varied_text(20_000, words_per_row=60))
        estimate = app.api.post(
            "/api/v1/runs/estimate",
            json={
                "base_model": "scratch-small",
                "config": {"batch_size": BATCH, "block_size": BLOCK, "precision": "fp32"},
            },
        ).json()
        assert estimate["total_bytes"] > 300 * 2**30, estimate
        run_id = app.launch(
            dataset, base_model="scratch-small", batch_size=BATCH, block_size=BLOCK,
            precision="fp32", max_steps=2, eval_split=0.0,
        )  # fmt: skip
        run = app.finished(run_id, timeout=300)
        page = signed_in_page(app.server.base_url, f"/runs/{run_id}")
    assert run["status"] == "failed"
    assert "OutOfMemoryError" in run["error"], run["error"]
    assert "ran out of memory" in run["error"] and "smaller batch size" in run["error"]
    assert "ran out of memory" in html.unescape(page)
