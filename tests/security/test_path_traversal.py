"""Path traversal: hostile names, ids and paths thrown at every route that takes one, and at
the artifact store itself.

For every payload: never a 5xx, never a byte of a file outside the artifact root or the
static folder in the answer (a sentinel file is planted next to the installation, and the
contents of /etc/passwd, the settings module and the session key are looked for too), and
nothing written or deleted outside the artifact root (the installation's folder, the sentinel
folder and the static folder are snapshotted before and after). Requests go through the raw
ASGI interface (see `Site.raw`), as a server hands them over: `../` is not folded away by a
client and `%2e%2e%2f` is decoded exactly once.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from starlette.websockets import WebSocketDisconnect

from app.core.errors import NotFound, ValidationFailed
from tests.conftest import text_jsonl
from tests.security.conftest import Site

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Path segments, as raw bytes on the request line.
SEGMENTS = [
    b"..",
    b"../..",
    b"../../../../../../etc/passwd",
    b"..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    b"%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    b"%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    b".%2e/.%2e/.%2e/etc/passwd",
    b"%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    b"..%255c..%255c..%255cetc%255cpasswd",
    b"..\\..\\..\\..\\etc\\passwd",
    b"..%5c..%5c..%5c..%5cetc%5cpasswd",
    b"....//....//....//etc/passwd",
    b"/etc/passwd",
    b"%2fetc%2fpasswd",
    b"C:\\Windows\\win.ini",
    b"C:%5cWindows%5cwin.ini",
    b"1%00",
    b"1%00/../../../etc/passwd",
    b"..%00/..%00/etc/passwd",
    b"1;../../../etc/passwd",
    b"1%3b..%2f..%2f..%2fetc%2fpasswd",
    b"1#/../../../etc/passwd",
    b"1?x=../../../etc/passwd",
    b"%3f..%2f..%2fetc%2fpasswd",
    b"%23..%2f..%2fetc%2fpasswd",
    b"%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afpasswd",
    b"%e0%80%ae%e0%80%ae%e0%80%afetc%e0%80%afpasswd",
    b"%ef%bc%8e%ef%bc%8e%ef%bc%8fetc%ef%bc%8fpasswd",
    b"%u002e%u002e%u2215etc%u2215passwd",
    b"99999999999999999999",
    b"-99999999999999999999",
    b"2147483648",
    b"9223372036854775808",
    b"-1",
    b"0",
    b"1e3",
    b"0x1",
]
# Aimed at the static mount: files of the project, the session key, the sentinel.
STATIC_SEGMENTS = [
    b"../app/core/settings.py",
    b"..%2fapp%2fcore%2fsettings.py",
    b"..%2f..%2fapp/core/settings.py",
    b"%2e%2e/app/core/settings.py",
    b"%2e%2e%2fapp%2fcore%2fsettings.py",
    b"%252e%252e%252fapp%252fcore%252fsettings.py",
    b"..%5capp%5ccore%5csettings.py",
    b"css/../../app/core/settings.py",
    b"css/..%2f..%2fapp%2fcore%2fsettings.py",
    b"css%2f..%2f..%2fpyproject.toml",
    b"vendor/../../pyproject.toml",
    b"%c0%ae%c0%ae/pyproject.toml",
    b"css/app.css%00../../pyproject.toml",
    b"css/app.css;../../pyproject.toml",
]
# (method, path template, who): every route with an id or a path in it. {p} is the payload.
ID_ROUTES = [
    ("GET", "/api/v1/datasets/{p}"),
    ("DELETE", "/api/v1/datasets/{p}"),
    ("GET", "/api/v1/datasets/{p}/versions"),
    ("GET", "/api/v1/datasets/{p}/versions/1"),
    ("GET", "/api/v1/datasets/1/versions/{p}"),
    ("GET", "/api/v1/datasets/{p}/preview"),
    ("GET", "/api/v1/datasets/{p}/stats"),
    ("GET", "/api/v1/datasets/{p}/download"),
    ("GET", "/api/v1/datasets/{p}/download?kind=original"),
    ("GET", "/api/v1/datasets/1/download?kind={p}"),
    ("GET", "/api/v1/datasets/1/download?kind=canonical&version_id={p}"),
    ("GET", "/api/v1/uploads/{p}"),
    ("PUT", "/api/v1/uploads/{p}"),
    ("POST", "/api/v1/uploads/{p}/complete"),
    ("DELETE", "/api/v1/uploads/{p}"),
    ("GET", "/api/v1/runs/{p}"),
    ("POST", "/api/v1/runs/{p}/cancel"),
    ("GET", "/api/v1/runs/{p}/metrics"),
    ("GET", "/api/v1/runs/{p}/metrics/download"),
    ("GET", "/api/v1/runs/{p}/events"),
    ("GET", "/api/v1/runs/{p}/checkpoints"),
    ("POST", "/api/v1/runs/{p}/stop"),
    ("POST", "/api/v1/runs/{p}/resume"),
    ("GET", "/api/v1/runs/{p}/config"),
    ("POST", "/api/v1/runs/{p}/clone"),
    ("GET", "/api/v1/model-versions/{p}"),
    ("GET", "/api/v1/model-versions/{p}/history"),
    ("GET", "/api/v1/model-versions/{p}/download"),
    ("GET", "/api/v1/model-versions/{p}/exports"),
    ("POST", "/api/v1/model-versions/{p}/stage"),
    ("GET", "/api/v1/model-exports/{p}"),
    ("GET", "/api/v1/model-exports/{p}/download"),
    ("GET", "/api/v1/evaluations/{p}"),
    ("GET", "/api/v1/models/{p}/comparison"),
    ("GET", "/models/versions/{p}"),
    ("POST", "/models/versions/{p}/stage"),
    ("POST", "/runs/{p}/checkpoints/{p}/register"),
    ("GET", "/api/v1/deployments/{p}"),
    ("DELETE", "/api/v1/deployments/{p}"),
    ("DELETE", "/api/v1/tokens/{p}"),
    ("GET", "/v1/files/{p}"),
    ("GET", "/v1/files/file-{p}"),
    ("GET", "/v1/files/file-{p}/content"),
    ("DELETE", "/v1/files/file-{p}"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-{p}"),
    ("POST", "/v1/fine_tuning/jobs/ftjob-{p}/cancel"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-{p}/events"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-{p}/checkpoints"),
    ("GET", "/v1/models/{p}"),
    ("GET", "/v1/models/ft:{p}"),
    ("GET", "/datasets/{p}"),
    ("POST", "/datasets/{p}/delete"),
    ("GET", "/datasets/{p}/rows"),
    ("GET", "/runs/{p}"),
    ("POST", "/runs/{p}/cancel"),
    ("POST", "/runs/{p}/stop"),
    ("POST", "/runs/{p}/resume"),
    ("GET", "/runs/{p}/config"),
    ("POST", "/runs/{p}/config"),
    ("POST", "/models/versions/{p}/deploy"),
    ("POST", "/deployments/{p}/stop"),
    ("POST", "/settings/tokens/{p}/revoke"),
    ("GET", "/static/{p}"),
    # dataset preparation: hostile dataset ids, then hostile version ids of dataset 1
    ("POST", "/api/v1/datasets/{p}/versions"),
    ("GET", "/api/v1/datasets/{p}/versions/1/model-view"),
    ("GET", "/api/v1/datasets/1/versions/{p}/model-view"),
    ("POST", "/api/v1/datasets/1/versions/{p}/model-view"),
    ("GET", "/datasets/{p}/versions-panel"),
    ("GET", "/datasets/1/versions/{p}/model-view"),
    ("POST", "/datasets/1/versions/{p}/model-view"),
]
# Upload file names, as raw bytes in the multipart header.
FILENAMES = [
    b"../../../outside/evil.jsonl",
    b"..\\..\\..\\outside\\evil.jsonl",
    b"/tmp/evil.jsonl",
    b"/etc/passwd",
    b"%2e%2e%2f%2e%2e%2fevil.jsonl",
    b"%252e%252e%252fevil.jsonl",
    b"C:\\Windows\\System32\\evil.jsonl",
    b"\\\\server\\share\\evil.jsonl",
    b"evil\x00.jsonl",
    b"evil.jsonl\x00.png",
    b"evil.jsonl;.txt",
    b"evil.jsonl#.txt",
    b"evil.jsonl?.txt",
    b"evil.jsonl%00",
    b"\xc0\xae\xc0\xae/\xc0\xae\xc0\xae/evil.jsonl",
    b"\xef\xbc\x8e\xef\xbc\x8e\xef\xbc\x8fevil.jsonl",
    b"..",
    b".",
    b"",
    b"datasets/../../evil.jsonl",
]
# Ids inside JSON bodies.
BODY_IDS: list[object] = [
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
    "1\x00",
    "1;2",
    "\u00c0\u00ae\u00c0\u00ae/",
    99999999999999999999,
    -99999999999999999999,
    2**31,
    2**63,
    -1,
    0,
]


@dataclass
class Planted:
    """What lies outside the artifact root, and how to recognise it in an answer."""

    folder: Path
    sentinel: Path
    markers: list[bytes]


def _snapshot(*folders: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    files: dict[str, tuple[int, int]] = {}
    for folder in folders:
        for path in folder.rglob("*"):
            if any(path.is_relative_to(s) for s in skip) or path.name.startswith(
                ("llmide.db", "broker.db")
            ):
                continue  # the store may change; so may the databases
            stat = path.lstat()
            files[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return files


@pytest.fixture(scope="module")
def planted(site: Site) -> Planted:
    folder = site.data_dir.parent / "outside"
    folder.mkdir()
    sentinel = folder / "secret.txt"
    content = f"SENTINEL-{secrets.token_hex(8)}"
    sentinel.write_text(content)
    # Looks like a servable model, should anything follow a link out here.
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "model.safetensors").write_bytes(b"outside weights")
    # Links inside the artifact root that point out of it.
    (site.artifact_root / "datasets" / "escape").symlink_to(folder, target_is_directory=True)
    (site.artifact_root / "datasets" / "linked.jsonl").symlink_to(sentinel)
    (site.artifact_root / "runs" / "escape").symlink_to(folder, target_is_directory=True)
    markers = [
        content.encode(),
        b"root:x:0:0",
        b"The one place that reads environment variables",
        b"build-backend",
        (site.data_dir / "secret_key").read_bytes().strip(),
        b"SQLite format 3",
    ]
    return Planted(folder, sentinel, markers)


@pytest.fixture
def untouched(site: Site, planted: Planted) -> Iterator[None]:
    """Nothing outside the artifact root is written, changed or deleted by the test."""
    folders = (site.data_dir.parent, PROJECT_ROOT / "static")
    before = _snapshot(*folders, skip=(site.artifact_root,))
    yield
    after = _snapshot(*folders, skip=(site.artifact_root,))
    assert after == before
    assert planted.sentinel.read_text().startswith("SENTINEL-")
    assert not list(site.artifact_root.rglob("*evil*")), "an upload was stored under its own name"


def _auth(site: Site, path: str) -> dict[str, str]:
    """The owner's credentials for a path: cookie and CSRF for pages, the token for APIs."""
    if path.startswith(("/api/", "/v1/")):
        return site.team.owner.headers
    if path.startswith("/static/"):
        return {}
    return site.browsers["owner"].headers


def _assert_safe(
    planted: Planted, what: str, status: int, headers: dict[str, str], body: bytes
) -> None:
    assert status < 500, f"{what}: {status} {body[:300]!r}"
    seen = body + json.dumps(headers).encode()
    for marker in planted.markers:
        assert marker not in seen, f"{what}: the answer holds content from outside the store"


@pytest.mark.parametrize(("method", "template"), ID_ROUTES, ids=[f"{m} {t}" for m, t in ID_ROUTES])
def test_hostile_ids_and_paths_never_reach_outside_files_or_break_the_server(
    site: Site, planted: Planted, untouched: None, method: str, template: str
) -> None:
    path_prefix, _, suffix = template.partition("{p}")
    payloads = SEGMENTS + (STATIC_SEGMENTS if path_prefix == "/static/" else [])
    outside = quote(str(planted.sentinel)).encode()
    for payload in [*payloads, outside, b"..%2f..%2f..%2foutside%2fsecret.txt"]:
        raw_path = path_prefix.encode() + payload + suffix.encode()
        status, headers, body = site.raw(method, raw_path, _auth(site, path_prefix))
        _assert_safe(planted, f"{method} {raw_path!r}", status, headers, body)


def test_the_static_mount_serves_its_own_files_only(site: Site, planted: Planted) -> None:
    status, _, body = site.raw("GET", b"/static/css/app.css")
    assert status == 200 and body
    for payload in STATIC_SEGMENTS:
        status, headers, body = site.raw("GET", b"/static/" + payload)
        assert status in (400, 404), (payload, status)
        _assert_safe(planted, f"GET /static/{payload!r}", status, headers, body)


@pytest.mark.parametrize(
    "payload", ["..%2f..%2fetc", "%2e%2e", "99999999999999999999", "2147483648", "-1", "1e3", "x"]
)
def test_the_run_websocket_refuses_hostile_run_ids_without_crashing(
    site: Site, planted: Planted, payload: str
) -> None:
    url, headers = f"/ws/runs/{payload}", site.browsers["owner"].headers
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        site.client.websocket_connect(url, headers=headers) as ws,
    ):
        ws.receive_text()
    assert closed.value.code in (1000, 1008, 4404), closed.value
    assert closed.value.code != 1011


def test_huge_numbers_in_query_cursors_are_refused_not_a_crash(site: Site) -> None:
    run = site.ids["run"]
    for query in (
        f"/api/v1/runs/{run}/metrics?after_step=99999999999999999999",
        f"/api/v1/runs/{run}/events?after_id=99999999999999999999",
        "/api/v1/runs?offset=99999999999999999999",
        "/api/v1/datasets?offset=99999999999999999999",
        "/v1/files?after=file-99999999999999999999",
        "/v1/fine_tuning/jobs?after=ftjob-99999999999999999999",
        f"/api/v1/compare?run_ids={run}&run_ids=99999999999999999999",
        f"/api/v1/compare/series?run_ids={run}&run_ids=-99999999999999999999",
        "/compare?run=99999999999999999999",
    ):
        status, _, body = site.raw("GET", query.encode(), site.team.owner.headers)
        assert status < 500, (query, status, body[:200])
    with pytest.raises(WebSocketDisconnect) as closed:
        url = f"/ws/runs/{run}?after_step=99999999999999999999"
        with site.client.websocket_connect(url, headers=site.browsers["owner"].headers) as ws:
            ws.receive_text()
    assert closed.value.code != 1011


_CORPUS_UPLOADS = itertools.count()


def _corpus_content(n: int) -> bytes:
    """Different bytes per upload (the same bytes again would be answered as a duplicate)."""
    return (text_jsonl(3) + json.dumps({"text": f"corpus upload {n}"}) + "\n").encode()


def _multipart(filename: bytes, fields: dict[str, str], content: bytes) -> tuple[bytes, str]:
    boundary = "security-corpus-7c1e"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


UPLOAD_ROUTES = [
    ("/api/v1/datasets", {}),
    ("/v1/files", {"purpose": "fine-tune"}),
    ("/datasets", {}),
]


@pytest.mark.parametrize(("route", "fields"), UPLOAD_ROUTES, ids=[r for r, _ in UPLOAD_ROUTES])
def test_upload_file_names_never_choose_where_the_file_is_stored(
    site: Site, planted: Planted, untouched: None, route: str, fields: dict[str, str]
) -> None:
    from sqlalchemy import select

    from app.db.models import Dataset
    from app.db.session import session_scope
    from app.services.datasets import service as datasets

    with session_scope() as session:
        before = set(session.scalars(select(Dataset.id)))
    for filename in [*FILENAMES, str(planted.folder / "evil.jsonl").encode()]:
        body, content_type = _multipart(filename, fields, _corpus_content(next(_CORPUS_UPLOADS)))
        headers = {**_auth(site, route), "content-type": content_type}
        status, answer_headers, answer = site.raw("POST", route.encode(), headers, body)
        _assert_safe(planted, f"upload {filename!r} to {route}", status, answer_headers, answer)
    with session_scope() as session:
        stored = [d for d in session.scalars(select(Dataset)) if d.id not in before]
        for dataset in stored:
            assert not any(c in dataset.filename for c in "/\\\x00"), dataset.filename
            # Stored under names made from content hashes only.
            assert re.fullmatch(r"datasets/versions/[0-9a-f]{64}\.jsonl", dataset.storage_key)
            original = datasets.original_key(session=session, dataset=dataset)
            assert original.startswith(f"datasets/originals/{dataset.sha256}."), original
    assert stored, "no upload got through: the corpus tested nothing but refusals"
    for dataset in stored:
        status, headers, body = site.raw(
            "GET", f"/v1/files/file-{dataset.id}/content".encode(), site.team.owner.headers
        )
        assert status == 200 and body.startswith(text_jsonl(3).encode())
        disposition = headers["content-disposition"]
        assert "/" not in disposition.replace("%2F", "") and "\\" not in disposition
        assert "\r" not in disposition and "\n" not in disposition


BODY_ROUTES = [
    ("POST", "/api/v1/runs", lambda v: {"dataset_id": v}),
    ("POST", "/api/v1/runs", lambda v: {"dataset_id": 1, "validation_dataset_id": v}),
    ("POST", "/api/v1/deployments", lambda v: {"model_version_id": v}),
    (
        "POST",
        "/v1/fine_tuning/jobs",
        lambda v: {"model": "scratch-tiny", "training_file": f"file-{v}"},
    ),
    ("POST", "/v1/fine_tuning/jobs", lambda v: {"model": str(v), "training_file": "file-1"}),
    (
        "POST",
        "/v1/chat/completions",
        lambda v: {"model": str(v), "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("POST", "/v1/completions", lambda v: {"model": str(v), "prompt": "hi"}),
    (
        "POST",
        "/playground/stream",
        lambda v: {"model": str(v), "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("POST", "/api/v1/datasets/1/versions", lambda v: {"parent_version_id": v}),
    ("POST", "/workspace", None),
    ("POST", "/runs", None),
]


@pytest.mark.parametrize(
    ("method", "route", "body"), BODY_ROUTES, ids=[f"{m} {r}" for m, r, _ in BODY_ROUTES]
)
def test_hostile_ids_in_request_bodies_are_refused_cleanly(
    site: Site, planted: Planted, untouched: None, method: str, route: str, body: object
) -> None:
    for value in BODY_IDS:
        headers = _auth(site, route)
        if body is None:  # a page form: the id is a form field
            field = "workspace_id" if route == "/workspace" else "dataset_id"
            content = f"{field}={quote(str(value))}".encode()
            headers = {**headers, "content-type": "application/x-www-form-urlencoded"}
        else:
            content = json.dumps(body(value)).encode()  # type: ignore[operator]
            headers = {**headers, "content-type": "application/json"}
        status, answer_headers, answer = site.raw(method, route.encode(), headers, content)
        _assert_safe(planted, f"{route} with {value!r}", status, answer_headers, answer)
        assert status not in (200, 201) or route == "/playground/stream", (route, value, status)


# --- the artifact store ---------------------------------------------------------------------
def _escaping_keys(planted: Planted) -> list[str]:
    return [
        "..",
        "../outside/secret.txt",
        "datasets/../../outside/secret.txt",
        "datasets/..",
        "runs/1/../../../outside",
        "/etc/passwd",
        str(planted.sentinel),
        str(planted.folder),
        "datasets/%2e%2e/%2e%2e/outside",
        "datasets\\..\\..\\outside",
        "C:\\Windows\\win.ini",
        "datasets/x\x00.jsonl",
        "datasets/x.jsonl;../../outside",
        "datasets/x#/../../outside",
        "datasets/x?/../../outside",
        "datasets/\u00c0\u00ae\u00c0\u00ae/outside",
        "datasets/\uff0e\uff0e/\uff0e\uff0e/outside",
        "",
        " ",
        "datasets/escape",  # a link to a folder outside
        "datasets/escape/secret.txt",
        "datasets/linked.jsonl",  # a link to a file outside
        "runs/escape",
    ]


def test_artifact_keys_that_leave_the_store_are_refused(site: Site, planted: Planted) -> None:
    from app.services import artifacts

    for key in _escaping_keys(planted):
        for operation in (artifacts.resolve, artifacts.existing, artifacts.delete):
            with pytest.raises(ValidationFailed):
                operation(key)
    assert planted.sentinel.exists() and (planted.folder / "model.safetensors").exists()
    with pytest.raises(ValidationFailed):
        artifacts.key_for(planted.sentinel)
    with pytest.raises(ValidationFailed):
        artifacts.key_for(site.artifact_root / "datasets" / "linked.jsonl")


def test_artifact_keys_inside_the_store_still_resolve(site: Site) -> None:
    from app.services import artifacts

    root = site.artifact_root.resolve()
    final = artifacts.resolve(f"runs/{site.ids['finished_run']}/final")
    assert final.is_dir() and final.is_relative_to(root)
    with pytest.raises(NotFound):
        artifacts.existing("datasets/not-there.jsonl")


def test_a_dataset_whose_file_was_swapped_for_a_link_out_of_the_store_is_refused(
    site: Site, planted: Planted
) -> None:
    """The stored file replaced by a symlink to the sentinel: preview, download and delete
    refuse it (400) instead of reading, serving or deleting the file it points at."""
    from app.db.models import Dataset, DatasetVersion
    from app.db.session import session_scope

    dataset_id = site.new_dataset(filename="swapped.jsonl")
    with session_scope() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None
        dataset.storage_key = "datasets/linked.jsonl"
        for version in session.query(DatasetVersion).filter_by(dataset_id=dataset_id):
            version.storage_key = "datasets/linked.jsonl"
            upload = dict(version.report["upload"])
            upload["original_key"] = upload["rejected_key"] = "datasets/linked.jsonl"
            version.report = {**version.report, "upload": upload}
    for method, path, auth in (
        ("GET", f"/api/v1/datasets/{dataset_id}", "api"),
        ("GET", f"/api/v1/datasets/{dataset_id}/preview", "api"),
        ("GET", f"/api/v1/datasets/{dataset_id}/download?kind=canonical", "api"),
        ("GET", f"/api/v1/datasets/{dataset_id}/download?kind=original", "api"),
        ("GET", f"/api/v1/datasets/{dataset_id}/download?kind=rejected", "api"),
        ("GET", f"/datasets/{dataset_id}/rows", "page"),
        ("GET", f"/v1/files/file-{dataset_id}/content", "api"),
        ("GET", f"/datasets/{dataset_id}", "page"),
        ("DELETE", f"/api/v1/datasets/{dataset_id}", "api"),
        ("DELETE", f"/v1/files/file-{dataset_id}", "api"),
        ("POST", f"/datasets/{dataset_id}/delete", "page"),
    ):
        headers = site.team.owner.headers if auth == "api" else site.browsers["owner"].headers
        status, answer_headers, body = site.raw(method, path.encode(), headers)
        _assert_safe(planted, f"{method} {path}", status, answer_headers, body)
        assert status == 400, (method, path, status, body[:200])
    assert planted.sentinel.read_text().startswith("SENTINEL-")
    assert (site.artifact_root / "datasets" / "linked.jsonl").is_symlink()


@pytest.fixture(scope="module")
def hostile_version(site: Site) -> tuple[int, str]:
    """A registered version of the owner's whose storage key will be pointed elsewhere."""
    _, version_id, serving_name = site.finished_run_with_version()
    return version_id, serving_name


def _stored_keys(planted: Planted) -> list[str]:
    return [
        "/etc",
        str(planted.folder),
        "../outside",
        "runs/../../outside",
        "runs/escape",  # inside the store by name, a link out of it on disk
        "runs/1/final/../../../../outside",
        "C:\\models\\evil",
    ]


@pytest.mark.parametrize("index", range(7), ids=lambda i: f"key{i}")
def test_a_version_whose_storage_key_leaves_the_store_is_never_deployed_or_served(
    site: Site, planted: Planted, hostile_version: tuple[int, str], index: int
) -> None:
    from sqlalchemy import func, select

    from app.db.models import Deployment, ModelVersion
    from app.db.session import session_scope

    key = _stored_keys(planted)[index]
    version_id, name = hostile_version
    with session_scope() as session:
        version = session.get(ModelVersion, version_id)
        assert version is not None
        version.storage_key = key
    owner, browser = site.team.owner.headers, site.browsers["owner"].headers
    chat = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
    deploy = site.client.post(
        "/api/v1/deployments", json={"model_version_id": version_id}, headers=owner
    )
    assert deploy.status_code == 400, deploy.text
    assert "artifact" in deploy.json()["detail"]
    site.client.cookies.clear()
    page = site.client.post(
        f"/models/versions/{version_id}/deploy", headers=browser, follow_redirects=False
    )
    assert page.status_code == 400 and "artifact" in page.text
    for url, body in (
        ("/v1/chat/completions", chat),
        ("/v1/completions", {"model": name, "prompt": "hi"}),
    ):
        answer = site.client.post(url, json=body, headers=owner)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"
    site.client.cookies.clear()
    stream = site.client.post("/playground/stream", json=chat, headers=browser)
    assert stream.status_code == 200 and "artifact" in stream.text
    with session_scope() as session:
        recorded = session.scalar(
            select(func.count())
            .select_from(Deployment)
            .where(Deployment.model_version_id == version_id)
        )
    assert recorded == 0, "a refused version was recorded as a deployment"
    download = site.client.get(f"/api/v1/model-versions/{version_id}/download", headers=owner)
    assert download.status_code == 400, download.text
    for answer_text in (deploy.text, page.text, stream.text, download.text):
        assert planted.sentinel.read_text() not in answer_text


# --- imports by path (LLMIDE_IMPORT_DIR) -----------------------------------------------------
def _import_paths(planted: Planted, imports: Path) -> list[str]:
    return [
        "..",
        "../outside",
        "../../outside",
        str(planted.folder),
        str(planted.sentinel),
        "/etc/passwd",
        "escape",  # a link inside the import folder to the planted folder
        "half",  # a folder whose weights file links out
        "escape/../../outside",
        "%2e%2e/outside",
        "..\\outside",
        "C:\\Windows\\win.ini",
        "x\x00",
        "",
        str(imports / ".." / "outside"),
    ]


@pytest.fixture(scope="module")
def import_folder(site: Site, planted: Planted) -> Path:
    """The configured import folder, with links out of it to the planted folder."""
    imports = site.data_dir.parent / "imports"
    imports.mkdir()
    (imports / "escape").symlink_to(planted.folder, target_is_directory=True)
    (imports / "half").mkdir()
    (imports / "half" / "config.json").write_text("{}")
    (imports / "half" / "model.safetensors").symlink_to(planted.folder / "model.safetensors")
    return imports


def test_imports_by_path_never_leave_the_import_folder(
    site: Site, planted: Planted, import_folder: Path, untouched: None
) -> None:
    import os

    from sqlalchemy import func, select

    from app.core.settings import get_settings
    from app.db.models import ModelVersion
    from app.db.session import session_scope

    imports = import_folder
    os.environ["LLMIDE_IMPORT_DIR"] = str(imports)
    get_settings.cache_clear()
    try:
        with session_scope() as session:
            before = session.scalar(select(func.count()).select_from(ModelVersion))
        for path in _import_paths(planted, imports):
            body = json.dumps({"name": "imported", "path": path}).encode()
            headers = {**site.team.owner.headers, "content-type": "application/json"}
            status, answer_headers, answer = site.raw(
                "POST", b"/api/v1/models/import", headers, body
            )
            _assert_safe(planted, f"import {path!r}", status, answer_headers, answer)
            assert status in (400, 422), (path, status, answer[:200])
        with session_scope() as session:
            assert session.scalar(select(func.count()).select_from(ModelVersion)) == before
    finally:
        del os.environ["LLMIDE_IMPORT_DIR"]
        get_settings.cache_clear()
