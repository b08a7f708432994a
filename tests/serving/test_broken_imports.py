"""A broken model is a clear, final failure: no retry-later 503, no server paths (issue 18)."""

from __future__ import annotations

import io
from pathlib import Path

from tests.conftest import Team
from tests.serving.conftest import inference_process
from tests.serving.test_deployments import chat, deployment, wait_until

# Passes the import checks (the GGUF magic) but no loader can read it; the loader's refusal
# quotes the file's absolute path in the artifact store.
BROKEN_GGUF = b"GGUF" + bytes(64)


def test_a_broken_import_fails_with_a_message_and_no_server_paths_and_no_retry_later(
    serving_env: int, installation: Path, team: Team
) -> None:
    imported = team.owner.post(
        "/api/v1/models/import/upload",
        files={"file": ("broken.gguf", io.BytesIO(BROKEN_GGUF))},
        data={"name": "broken"},
    )
    assert imported.status_code == 201, imported.text
    version = imported.json()
    with inference_process(installation, serving_env):
        created = team.owner.post("/api/v1/deployments", json={"model_version_id": version["id"]})
        assert created.status_code == 202, created.text
        failed = wait_until(
            lambda: (d := deployment(team, created.json()["id"]))["status"] == "failed" and d,
            "the deployment to fail",
        )
        assert "broken.gguf" in failed["error"]
        assert str(installation) not in failed["error"] and "/artifacts/" not in failed["error"]
        for _ in range(2):  # the same clear answer every time, never "retry shortly"
            refused = chat(team, version["serving_name"])
            assert refused.status_code == 424, refused.text
            assert "Retry-After" not in refused.headers
            message = refused.json()["error"]["message"]
            assert "failed to load" in message and "deployed again" in message
            assert str(installation) not in message and "/artifacts/" not in message
