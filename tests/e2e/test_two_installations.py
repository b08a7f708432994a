"""Two installations on one machine (two data folders, two LLMIDE_PORTs, `llmide serve` each,
nothing else set): each gets an inference server of its own, and a web process that reaches the
other installation's server refuses it with a clear message instead of using it."""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.support import LoggedProcess, faults_env, wait_for, wait_healthy

pytestmark = pytest.mark.e2e


def inference_url(process: LoggedProcess) -> str:
    found = re.findall(r"\[llmide\] inference on (http://\S+)", process.log_tail(10**6))
    return found[-1] if found else ""


@pytest.fixture
def two_installations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[tuple[LoggedProcess, Path]]]:
    shared_secret = secrets.token_urlsafe(48)  # even one secret for both must not mix them
    monkeypatch.setenv("LLMIDE_SECRET_KEY", shared_secret)  # this test's web side too
    started = []
    try:
        for name in ("first", "second"):
            data_dir = tmp_path / name
            env = faults_env(data_dir, LLMIDE_SECRET_KEY=shared_secret)  # its own LLMIDE_PORT
            del env["LLMIDE_INFERENCE_PORT"]  # as a person runs it: the default
            process = LoggedProcess(
                name,
                [sys.executable, "-m", "app.cli", "serve", "--workers=1"],
                env,
                tmp_path / f"{name}.log",
            ).start()
            started.append((process, data_dir))
            wait_healthy(
                f"http://127.0.0.1:{env['LLMIDE_PORT']}", timeout=120, log=process.log_tail
            )
        yield started
    finally:
        for process, _ in started:
            process.stop()


def test_two_installations_get_their_own_inference_servers_and_refuse_each_others(
    two_installations: list[tuple[LoggedProcess, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.settings import Settings, get_settings
    from app.services.serving import inference_client

    urls = []
    for process, data_dir in two_installations:
        url = inference_url(process)
        assert url, process.log_tail()
        health = wait_for(
            lambda url=url: _health(url), timeout=120, what=f"{url}/healthz", log=process.log_tail
        )
        assert health["instance"] == Settings(data_dir=data_dir).resolved_instance_id
        urls.append(url)
    assert urls[0] != urls[1]

    # The second installation's web, pointed at the first one's inference server.
    (_, first_dir), (_, second_dir) = two_installations
    monkeypatch.setenv("LLMIDE_DATA_DIR", str(second_dir))
    monkeypatch.setenv("LLMIDE_INFERENCE_URL", urls[0])
    get_settings.cache_clear()
    try:
        with pytest.raises(inference_client.ForeignInferenceServer) as refused:
            asyncio.run(inference_client.list_loaded())
        assert "belongs to another LLM IDE installation" in str(refused.value)
        # and the server itself acts on nothing the other installation sends
        answer = httpx.get(
            urls[0] + "/models",
            headers={inference_client.TOKEN_HEADER: get_settings().internal_token},
        )
        assert answer.status_code == 401
        # its own installation is served
        monkeypatch.setenv("LLMIDE_DATA_DIR", str(first_dir))
        get_settings.cache_clear()
        assert asyncio.run(inference_client.list_loaded()) == []
    finally:
        get_settings.cache_clear()


def _health(url: str) -> dict | None:  # type: ignore[type-arg]
    try:
        answer = httpx.get(url + "/healthz", timeout=2)
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None  # type: ignore[no-any-return]
