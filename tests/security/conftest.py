"""One installation per test module: a team, the owner's things, signed-in browsers, raw requests.

The root `team` fixture is per test; the security modules send hundreds of requests against the
same people and things, so they build them once per module here (the same way: through the API).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import PASSWORD, Persona, Team, configure_environment, text_jsonl

HTML = {"Accept": "text/html"}
SESSION_COOKIE = "llmide_session"
CSRF_HEADER = "X-CSRF-Token"
# Names of the owner's things: none of them may ever reach a non-member.
DATASET_NAME = "owner-corpus-7c1e"
DATASET_FILE = "owner-file-7c1e.jsonl"
RUN_NAME = "owner-run-7c1e"
RUN_SUFFIX = "ownersfx7c1e"
TOKEN_NAME = "owner-key-7c1e"


def closed_port() -> int:
    """A local port nothing listens on: the inference server is "down" for these tests."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class BrowserSession:
    """A browser's signed session cookie and the CSRF token its pages carry."""

    cookie: str
    csrf: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}", CSRF_HEADER: self.csrf, **HTML}


@dataclass
class Site:
    """A running installation, its team, and the owner's things (ids by kind)."""

    client: TestClient
    data_dir: Path
    team: Team
    ids: dict[str, Any] = field(default_factory=dict)
    browsers: dict[str, BrowserSession] = field(default_factory=dict)
    _counter: Iterator[int] = field(default_factory=itertools.count)

    @property
    def artifact_root(self) -> Path:
        return self.data_dir / "artifacts"

    def persona(self, name: str) -> Persona:
        return getattr(self.team, name)  # type: ignore[no-any-return]

    def unique(self, stem: str) -> str:
        return f"{stem}-{next(self._counter)}"

    # --- requests as a persona ------------------------------------------------------------
    def api(self, who: str | None, method: str, url: str, **kw: Any) -> httpx.Response:
        """A JSON/OpenAI request with the persona's bearer token (None: anonymous)."""
        headers = dict(kw.pop("headers", None) or {})
        if who is not None:
            headers = {**self.persona(who).headers, **headers}
        self.client.cookies.clear()
        return self.client.request(method, url, headers=headers, follow_redirects=False, **kw)

    def page(self, who: str, method: str, url: str, **kw: Any) -> httpx.Response:
        """A browser request with the persona's cookie and CSRF token ("anonymous" has one too)."""
        headers = {**self.browsers[who].headers, **(kw.pop("headers", None) or {})}
        self.client.cookies.clear()
        return self.client.request(method, url, headers=headers, follow_redirects=False, **kw)

    def sign_in_browser(self, email: str, workspace_id: int | None = None) -> BrowserSession:
        """Sign in through the JSON API (as the dashboard's login does), then pick a workspace."""
        self.client.cookies.clear()
        login = self.client.post("/api/v1/session", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        csrf = login.json()["csrf_token"]
        if workspace_id is not None:
            switched = self.client.post(
                "/workspace",
                data={"workspace_id": str(workspace_id)},
                headers={**HTML, CSRF_HEADER: csrf},
                follow_redirects=False,
            )
            assert switched.status_code == 303, switched.text
        cookie = self.client.cookies.get(SESSION_COOKIE)
        assert cookie
        self.client.cookies.clear()
        return BrowserSession(cookie, csrf)

    def anonymous_browser(self) -> BrowserSession:
        """A visitor who opened the login page: a session with a CSRF token and nobody in it."""
        self.client.cookies.clear()
        page = self.client.get("/login", headers=HTML)
        match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert match, page.text[:300]
        cookie = self.client.cookies.get(SESSION_COOKIE)
        assert cookie
        self.client.cookies.clear()
        return BrowserSession(cookie, match.group(1))

    # --- the owner's things ---------------------------------------------------------------
    def new_dataset(self, name: str | None = None, filename: str = "corpus.jsonl") -> int:
        content = text_jsonl(8) + json.dumps({"text": self.unique("row")}) + "\n"
        created = self.team.owner.upload(filename, content, name=name or self.unique("ds"))
        assert created.status_code == 201, created.text
        return int(created.json()["id"])

    def new_batch_file(self) -> int:
        """A `purpose: batch` file of the owner's (file-raw-<id>) with one chat request."""
        line = json.dumps(
            {
                "custom_id": self.unique("req"),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            }
        )
        created = self.api(
            "owner",
            "POST",
            "/v1/files",
            data={"purpose": "batch"},
            files={"file": ("batch.jsonl", (line + "\n").encode())},
        )
        assert created.status_code == 200, created.text
        return int(created.json()["id"].removeprefix("file-raw-"))

    def new_batch(self) -> int:
        """A queued batch of the owner's (no worker runs here: it stays `validating`)."""
        created = self.api(
            "owner",
            "POST",
            "/v1/batches",
            json={
                "input_file_id": f"file-raw-{self.ids['batch_file']}",
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert created.status_code == 200, created.text
        return int(created.json()["id"].removeprefix("batch_"))

    def first_version(self, dataset_id: int) -> int:
        from sqlalchemy import select

        from app.db.models import DatasetVersion
        from app.db.session import session_scope

        with session_scope() as session:
            return int(
                session.scalars(
                    select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset_id)
                ).one()
            )

    def new_upload(self, content: bytes | None = None) -> int:
        """A chunked upload of the owner's; with `content`, all of it already sent."""
        data = content or b"x" * 64
        created = self.api(
            "owner",
            "POST",
            "/api/v1/uploads",
            json={"filename": "chunked.jsonl", "total_size": len(data)},
        )
        assert created.status_code == 201, created.text
        upload_id = int(created.json()["id"])
        if content is not None:
            sent = self.api("owner", "PUT", f"/api/v1/uploads/{upload_id}?offset=0", content=data)
            assert sent.status_code == 200, sent.text
        return upload_id

    def new_sent_upload(self) -> int:
        unique = json.dumps({"text": self.unique("chunked row")}) + "\n"
        return self.new_upload((text_jsonl(3) + unique).encode())

    def new_run(self, **extra: Any) -> int:
        body = {"dataset_id": self.ids["dataset"], "config": {"max_steps": 2}, **extra}
        created = self.api("owner", "POST", "/api/v1/runs", json=body)
        assert created.status_code == 201, created.text
        return int(created.json()["id"])

    def new_run_in(self, status: str) -> int:
        """A run a worker has claimed ("running") or that then failed ("failed")."""
        from app.db.models import RunStatus
        from app.db.session import session_scope
        from app.services.runs import execution as run_execution

        run_id = self.new_run()
        with session_scope() as session:
            assert run_execution.claim(session=session, run_id=run_id, task_id="t") is not None
            if status == "failed":
                run_execution.finish(
                    session=session, run_id=run_id, status=RunStatus.failed, error="boom"
                )
        return run_id

    def new_sweep(self) -> int:
        body = {"dataset_id": self.ids["dataset"], "search_space": {"seed": {"values": [1, 2]}}}
        created = self.api("owner", "POST", "/api/v1/sweeps", json=body)
        assert created.status_code == 201, created.text
        return int(created.json()["id"])

    def new_cross_validation(self) -> int:
        body = {"dataset_id": self.ids["dataset"], "k": 2, "config": {"max_steps": 2}}
        created = self.api("owner", "POST", "/api/v1/cross-validations", json=body)
        assert created.status_code == 201, created.text
        return int(created.json()["id"])

    def new_token(self, name: str = "spare") -> int:
        created = self.api("owner", "POST", "/api/v1/tokens", json={"name": name})
        assert created.status_code == 201, created.text
        return int(created.json()["id"])

    def new_deployment(self) -> int:
        """A recorded (failed) deployment of the owner's version, as a down server leaves one."""
        from app.db.models import Deployment, DeploymentStatus, ModelVersion
        from app.db.session import session_scope

        with session_scope() as session:
            version = session.get(ModelVersion, self.ids["version"])
            assert version is not None
            deployment = Deployment(
                workspace_id=version.workspace_id,
                model_version_id=version.id,
                status=DeploymentStatus.failed,
                error="the inference server is not reachable",
            )
            session.add(deployment)
            session.flush()
            return int(deployment.id)

    def registry_things(self) -> dict[str, int]:
        """The checkpoint behind the owner's version, its model, and a queued export and
        evaluation of it (recorded as the API records them; no worker runs here)."""
        from app.db.models import Evaluation, ModelExport, ModelVersion
        from app.db.session import session_scope

        with session_scope() as session:
            version = session.get(ModelVersion, self.ids["version"])
            assert version is not None and version.checkpoint_id is not None
            export = ModelExport(
                workspace_id=version.workspace_id, model_version_id=version.id, kind="onnx"
            )
            evaluation = Evaluation(
                workspace_id=version.workspace_id,
                model_version_id=version.id,
                dataset_id=self.ids["dataset"],
                dataset_sha256="0" * 64,
            )
            session.add_all([export, evaluation])
            session.flush()
            return {
                "checkpoint": int(version.checkpoint_id),
                "model": int(version.registered_model_id),
                "export": int(export.id),
                "evaluation": int(evaluation.id),
            }

    def new_user(self) -> str:
        email = f"{self.unique('member')}@example.com"
        created = self.api(
            "admin", "POST", "/api/v1/users", json={"email": email, "password": PASSWORD}
        )
        assert created.status_code == 201, created.text
        return email

    def new_member(self) -> int:
        """A new user the owner added to their workspace as a viewer: their user id."""
        email = self.new_user()
        added = self.api(
            "owner", "POST", "/api/v1/members", json={"email": email, "role": "viewer"}
        )
        assert added.status_code == 201, added.text
        return int(added.json()["user_id"])

    def finished_run_with_version(self) -> tuple[int, int, str]:
        """A run the worker finished with a (dummy) safetensors model: (run, version, name)."""
        from app.db.models import ModelVersion, RunStatus
        from app.db.session import session_scope
        from app.services.runs import execution as run_execution

        run_id = self.new_run(suffix=RUN_SUFFIX)
        final = self.artifact_root / "runs" / str(run_id) / "final"
        final.mkdir(parents=True)
        (final / "config.json").write_text('{"model_type": "gpt2"}')
        (final / "model.safetensors").write_bytes(b"not really weights")
        with session_scope() as session:
            assert run_execution.claim(session=session, run_id=run_id, task_id="t") is not None
            run_execution.finish(
                session=session,
                run_id=run_id,
                status=RunStatus.succeeded,
                final_checkpoint_key=f"runs/{run_id}/final",
                final_step=4,
                final_metrics={"eval_loss": 2.5},
            )
        with session_scope() as session:
            version = session.query(ModelVersion).filter_by(run_id=run_id).one()
            return run_id, int(version.id), str(version.serving_name)

    # --- raw requests, as a server hands them to the app ----------------------------------
    def raw(
        self,
        method: str,
        raw_path: bytes,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[int, dict[str, str], bytes]:
        """Send a request path exactly as given: no client-side `..` folding or re-encoding.

        httpx folds `/a/../b` before sending and the test client decodes `%25` twice; uvicorn
        does neither (it percent-decodes `path` once and passes `raw_path` through), so the
        traversal corpus goes through this instead.
        """
        path_part, _, query = raw_path.partition(b"?")
        path_part = path_part.split(b"#", 1)[0]  # a fragment never reaches a server
        all_headers = {"host": "127.0.0.1", **(headers or {})}
        if body:
            all_headers["content-length"] = str(len(body))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": unquote(path_part.decode("latin-1")),
            "raw_path": path_part,
            "root_path": "",
            "query_string": query,
            "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in all_headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        return self.client.portal.call(_asgi_call, self.client.app, scope, body)  # type: ignore[union-attr]


async def _asgi_call(
    app: Any, scope: dict[str, Any], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    status = 0
    headers: dict[str, str] = {}
    chunks: list[bytes] = []
    done = asyncio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            headers.update((k.decode().lower(), v.decode("latin-1")) for k, v in message["headers"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                done.set()

    try:
        await app(scope, receive, send)
    except Exception:  # the server would answer 500: that is what the tests look for
        status = status or 500
        if status < 500:
            status = 500
    return status, headers, b"".join(chunks)


def _api_token(client: TestClient, email: str) -> str:
    client.cookies.clear()
    login = client.post("/api/v1/session", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    created = client.post(
        "/api/v1/tokens", json={"name": "tests"}, headers={CSRF_HEADER: login.json()["csrf_token"]}
    )
    assert created.status_code == 201, created.text
    client.cookies.clear()
    return str(created.json()["token"])


def _persona(client: TestClient, email: str) -> Persona:
    token = _api_token(client, email)
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
    return Persona(email, token, client, me["workspace"]["id"])


def build_team(client: TestClient) -> Team:
    """Admin (first user), an owner with an editor and a viewer, and an outsider (as `team`)."""
    setup = client.post("/api/v1/setup", json={"email": "admin@example.com", "password": PASSWORD})
    assert setup.status_code == 201, setup.text
    admin = _persona(client, "admin@example.com")
    people = {}
    for name in ("owner", "editor", "viewer", "outsider"):
        email = f"{name}@example.com"
        created = admin.post("/api/v1/users", json={"email": email, "password": PASSWORD})
        assert created.status_code == 201, created.text
        people[name] = _persona(client, email)
    owner = people["owner"]
    for name in ("editor", "viewer"):
        added = owner.post("/api/v1/members", json={"email": people[name].email, "role": name})
        assert added.status_code == 201, added.text
        people[name].workspace_id = owner.workspace_id
    return Team(admin, owner, people["editor"], people["viewer"], people["outsider"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Site]:
    """A fresh embedded installation (SQLite) for one test module, with the inference server down.

    The owner's workspace holds a dataset, a queued run, a registered model version, a
    deployment and an API token, all named with markers no non-member may ever see.
    """
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("LLMIDE_")}
    base = tmp_path_factory.mktemp("security")
    data_dir = base / "data"
    data_dir.mkdir()
    shutil.copy(sqlite_template, data_dir / "llmide.db")
    os.environ["LLMIDE_INFERENCE_URL"] = f"http://127.0.0.1:{closed_port()}"
    configure_environment(data_dir, database_url=None, redis_url=None)
    from app.core.settings import get_settings
    from app.db.session import reset_engine_cache
    from app.main import create_app

    try:
        with TestClient(create_app(), base_url="http://127.0.0.1") as client:
            site = Site(client=client, data_dir=data_dir, team=build_team(client))
            ids = site.ids
            ids["workspace"] = site.team.owner.workspace_id
            ids["dataset"] = site.new_dataset(DATASET_NAME, DATASET_FILE)
            # A dataset no rule consumes, and its uploaded version (dataset preparation routes).
            ids["prep_dataset"] = site.new_dataset()
            ids["prep_version"] = site.first_version(ids["prep_dataset"])

            ids["dataset_version"] = site.api(
                "owner", "GET", f"/api/v1/datasets/{ids['dataset']}"
            ).json()["version_id"]
            ids["upload"] = site.new_upload()
            ids["sent_upload"] = site.new_sent_upload()
            ids["run"] = site.new_run(name=RUN_NAME)
            ids["running_run"] = site.new_run_in("running")
            ids["failed_run"] = site.new_run_in("failed")
            ids["finished_run"], ids["version"], ids["serving_name"] = (
                site.finished_run_with_version()
            )
            ids["deployment"] = site.new_deployment()
            ids["sweep"] = site.new_sweep()
            ids["batch_file"] = site.new_batch_file()
            ids["batch"] = site.new_batch()
            ids["cross_validation"] = site.new_cross_validation()
            ids.update(site.registry_things())
            ids["token"] = site.new_token(TOKEN_NAME)
            # Someone who exists but belongs to nobody else's workspace (member invitations).
            ids["member_email"] = site.new_user()
            # A viewer of the owner's workspace whose role may change or who may be removed.
            ids["member"] = site.new_member()
            # An address nobody has: refused user creations must leave it unused.
            ids["new_email"] = "never-created@example.com"
            site.browsers["anonymous"] = site.anonymous_browser()
            for name in ("admin", "owner", "editor", "viewer", "outsider"):
                persona = site.persona(name)
                site.browsers[name] = site.sign_in_browser(persona.email, persona.workspace_id)
            yield site
    finally:
        reset_engine_cache()
        for key in [k for k in os.environ if k.startswith("LLMIDE_")]:
            del os.environ[key]
        os.environ.update(saved_env)
        get_settings.cache_clear()


_UPLOADS = itertools.count()


def upload(filename: str, content: str | None = None) -> dict[str, Any]:
    """The `files=` of a small valid JSONL upload under `filename` (different bytes each
    time: the same bytes again would be recognised as a duplicate upload)."""
    if content is None:
        content = text_jsonl(4) + json.dumps({"text": f"upload {next(_UPLOADS)}"}) + "\n"
    return {"file": (filename, io.BytesIO(content.encode()))}
