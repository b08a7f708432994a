"""Who may do what: every route of the app, against every persona, with real resource ids.

RULES states, for each (method, path) of the app's route table, who may call it. A route
without a rule fails `test_every_route_has_a_rule_and_every_rule_a_route`, so a new route
cannot ship without someone deciding who may use it. Each rule is then exercised as each of
six personas, with the ids of real things in the owner's workspace:

- anonymous: 401 on the JSON and OpenAI APIs, a 303 to /login on pages, close 4401 on the
  websocket; only the routes marked PUBLIC answer (health, sign-in, static files);
- viewer, editor, owner: members of the owner's workspace, with those roles;
- outsider, admin: not members (an administrator manages users, not other teams' data). On
  the owner's ids they get a 404, never a 403 or a 200; on lists they get their own
  workspace's, with none of the owner's things in it.

A refused request must also change nothing: after each one the owner's things are checked
in the database. The inference server is not running, so routes that need it answer 503 to
callers who are allowed (their rule says `inference=True`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

from tests.conftest import PASSWORD
from tests.security.conftest import (
    DATASET_FILE,
    DATASET_NAME,
    RUN_NAME,
    RUN_SUFFIX,
    TOKEN_NAME,
    Site,
    upload,
)


class Access(StrEnum):
    PUBLIC = "anyone, signed in or not"
    SIGNED_IN = "any signed-in user, on their own account"
    OWN = "only the user the thing belongs to"
    VIEWER = "members of the workspace, any role"
    EDITOR = "editors and owners of the workspace"
    OWNER = "owners of the workspace"
    ADMIN = "administrators"


ROLE_RANK = {Access.VIEWER: 0, Access.EDITOR: 1, Access.OWNER: 2}
MEMBER_RANK = {"viewer": 0, "editor": 1, "owner": 2}
PERSONAS = ("anonymous", "viewer", "editor", "owner", "outsider", "admin")
# Not members of the owner's workspace; each owns a workspace of their own.
STRANGERS = ("outsider", "admin")
CHAT = [{"role": "user", "content": "hello"}]


@dataclass(frozen=True)
class Rule:
    """Who may call a route, what an allowed call answers, and how to make one.

    target: "id" when the request names one of the owner's things (non-members get 404),
    "list" when it lists the caller's workspace (non-members see only their own), "none"
    otherwise. url/json/form/files are templates filled with the ids of the owner's things;
    `consumes` names the kind of thing an allowed call uses up (it gets a fresh one).
    """

    access: Access
    target: str = "none"
    ok: int = 200
    url: str | None = None
    json: Any = None
    form: dict[str, Any] | None = None
    files: str | None = None
    consumes: str | None = None
    inference: bool = False
    public: tuple[int, int] | None = None  # (anonymous, signed in) answers of a PUBLIC route
    stranger: int = 404
    stranger_says: str | None = None


R = Rule
A = Access
RULES: dict[tuple[str, str], Rule] = {
    # --- system and docs ------------------------------------------------------------------
    ("GET", "/healthz"): R(A.PUBLIC, public=(200, 200)),
    ("GET", "/metrics"): R(A.SIGNED_IN),
    ("GET", "/openapi.json"): R(A.SIGNED_IN),
    ("GET", "/docs"): R(A.SIGNED_IN),
    ("GET", "/static/{path}"): R(A.PUBLIC, url="/static/css/app.css", public=(200, 200)),
    # --- sign-in, tokens, workspaces, users -----------------------------------------------
    ("POST", "/api/v1/setup"): R(
        A.PUBLIC, public=(409, 409), json={"email": "second@example.com", "password": PASSWORD}
    ),
    ("POST", "/api/v1/session"): R(
        A.PUBLIC, public=(200, 200), json={"email": "viewer@example.com", "password": PASSWORD}
    ),
    ("DELETE", "/api/v1/session"): R(A.SIGNED_IN, ok=204),
    ("GET", "/api/v1/me"): R(A.SIGNED_IN),
    ("GET", "/api/v1/tokens"): R(A.SIGNED_IN, "list"),
    ("POST", "/api/v1/tokens"): R(A.SIGNED_IN, ok=201, json={"name": "matrix"}),
    ("DELETE", "/api/v1/tokens/{token_id}"): R(
        A.OWN, "id", 204, url="/api/v1/tokens/{token}", consumes="token"
    ),
    ("GET", "/api/v1/workspaces"): R(A.SIGNED_IN, "list"),
    ("POST", "/api/v1/workspaces"): R(A.SIGNED_IN, ok=201, json={"name": "side project"}),
    ("GET", "/api/v1/members"): R(A.VIEWER, "list"),
    ("POST", "/api/v1/members"): R(
        A.OWNER, ok=201, json={"email": "{member_email}", "role": "viewer"}, consumes="member_email"
    ),
    ("PATCH", "/api/v1/members/{user_id}"): R(
        A.OWNER, "id", url="/api/v1/members/{member}", json={"role": "editor"}, consumes="member"
    ),
    ("DELETE", "/api/v1/members/{user_id}"): R(
        A.OWNER, "id", 204, url="/api/v1/members/{member}", consumes="member"
    ),
    ("POST", "/api/v1/users"): R(
        A.ADMIN, ok=201, json={"email": "{new_email}", "password": PASSWORD}, consumes="new_email"
    ),
    ("GET", "/api/v1/users"): R(A.ADMIN),
    ("PATCH", "/api/v1/users/{user_id}"): R(
        A.ADMIN, url="/api/v1/users/{member}", json={"is_active": True}
    ),
    ("POST", "/api/v1/users/{user_id}/password"): R(
        A.ADMIN,
        ok=204,
        url="/api/v1/users/{member}/password",
        json={"password": PASSWORD},
        consumes="member",
    ),
    ("GET", "/api/v1/admin/workspaces"): R(A.ADMIN),
    ("POST", "/api/v1/admin/workspaces"): R(
        A.ADMIN, ok=201, json={"name": "team b", "owner_email": "admin@example.com"}
    ),
    ("GET", "/api/v1/audit"): R(A.OWNER, "list"),
    # --- datasets ---------------------------------------------------------------------------
    ("GET", "/api/v1/datasets"): R(A.VIEWER, "list"),
    ("POST", "/api/v1/datasets"): R(A.EDITOR, ok=201, files="corpus.jsonl"),
    ("GET", "/api/v1/datasets/{dataset_id}"): R(A.VIEWER, "id", url="/api/v1/datasets/{dataset}"),
    ("DELETE", "/api/v1/datasets/{dataset_id}"): R(
        A.EDITOR, "id", 204, url="/api/v1/datasets/{dataset}", consumes="dataset"
    ),
    ("GET", "/api/v1/datasets/{dataset_id}/versions"): R(
        A.VIEWER, "id", url="/api/v1/datasets/{dataset}/versions"
    ),
    ("GET", "/api/v1/datasets/{dataset_id}/versions/{version_id}"): R(
        A.VIEWER, "id", url="/api/v1/datasets/{dataset}/versions/{dataset_version}"
    ),
    ("GET", "/api/v1/datasets/{dataset_id}/preview"): R(
        A.VIEWER, "id", url="/api/v1/datasets/{dataset}/preview?q=the"
    ),
    ("GET", "/api/v1/datasets/{dataset_id}/stats"): R(
        A.VIEWER, "id", url="/api/v1/datasets/{dataset}/stats"
    ),
    ("GET", "/api/v1/datasets/{dataset_id}/download"): R(
        A.VIEWER, "id", url="/api/v1/datasets/{dataset}/download?kind=original"
    ),
    # --- chunked uploads: an upload is its starter's alone ---------------------------------
    ("POST", "/api/v1/uploads"): R(
        A.EDITOR, ok=201, json={"filename": "big.csv", "total_size": 1000}
    ),
    ("GET", "/api/v1/uploads/{upload_id}"): R(A.OWN, "id", url="/api/v1/uploads/{upload}"),
    ("PUT", "/api/v1/uploads/{upload_id}"): R(
        A.OWN, "id", url="/api/v1/uploads/{upload}?offset=0", form={"c": "x"}, consumes="upload"
    ),
    ("POST", "/api/v1/uploads/{upload_id}/complete"): R(
        A.OWN,
        "id",
        201,
        url="/api/v1/uploads/{sent_upload}/complete",
        form={"on_error": "reject"},
        consumes="sent_upload",
    ),
    ("DELETE", "/api/v1/uploads/{upload_id}"): R(
        A.OWN, "id", 204, url="/api/v1/uploads/{upload}", consumes="upload"
    ),
    # Its owner is told the rest is missing (409); anyone else finds no such upload.
    ("POST", "/api/v1/uploads/{upload_id}/import-model"): R(
        A.OWN, "id", 409, url="/api/v1/uploads/{upload}/import-model", json={"name": "big"}
    ),
    # --- runs -------------------------------------------------------------------------------
    ("GET", "/api/v1/base-models"): R(A.SIGNED_IN),
    ("GET", "/api/v1/runs"): R(A.VIEWER, "list"),
    ("GET", "/api/v1/workers"): R(A.VIEWER),
    ("POST", "/api/v1/runs"): R(A.EDITOR, "id", 201, json={"dataset_id": "{dataset}"}),
    ("POST", "/api/v1/runs/estimate"): R(A.VIEWER, json={"config": {"batch_size": 4}}),
    ("GET", "/api/v1/runs/{run_id}"): R(A.VIEWER, "id", url="/api/v1/runs/{run}"),
    ("POST", "/api/v1/runs/{run_id}/cancel"): R(
        A.EDITOR, "id", url="/api/v1/runs/{run}/cancel", consumes="run"
    ),
    ("POST", "/api/v1/runs/{run_id}/stop"): R(
        A.EDITOR, "id", url="/api/v1/runs/{running_run}/stop", consumes="running_run"
    ),
    ("POST", "/api/v1/runs/{run_id}/pause"): R(
        A.EDITOR, "id", url="/api/v1/runs/{run}/pause", consumes="run"
    ),
    ("POST", "/api/v1/runs/{run_id}/resume"): R(
        A.EDITOR, "id", url="/api/v1/runs/{failed_run}/resume", consumes="failed_run"
    ),
    ("GET", "/api/v1/runs/{run_id}/config"): R(A.VIEWER, "id", url="/api/v1/runs/{run}/config"),
    ("POST", "/api/v1/runs/{run_id}/clone"): R(A.EDITOR, "id", 201, url="/api/v1/runs/{run}/clone"),
    ("POST", "/api/v1/runs/{run_id}/priority"): R(
        A.EDITOR,
        "id",
        url="/api/v1/runs/{run}/priority",
        json={"priority": "high"},
        consumes="run",
    ),
    ("POST", "/api/v1/runs/{run_id}/move"): R(
        A.EDITOR, "id", url="/api/v1/runs/{run}/move", json={"direction": "up"}, consumes="run"
    ),
    ("GET", "/api/v1/sweeps"): R(A.VIEWER, "list"),
    ("POST", "/api/v1/sweeps"): R(
        A.EDITOR,
        "id",
        201,
        json={"dataset_id": "{dataset}", "search_space": {"seed": {"values": [3]}}},
    ),
    ("GET", "/api/v1/sweeps/{sweep_id}"): R(A.VIEWER, "id", url="/api/v1/sweeps/{sweep}"),
    ("POST", "/api/v1/sweeps/{sweep_id}/cancel"): R(
        A.EDITOR, "id", url="/api/v1/sweeps/{sweep}/cancel", consumes="sweep"
    ),
    ("GET", "/api/v1/cross-validations"): R(A.VIEWER, "list"),
    ("POST", "/api/v1/cross-validations"): R(
        A.EDITOR, "id", 201, json={"dataset_id": "{dataset}", "k": 2, "config": {"max_steps": 2}}
    ),
    ("GET", "/api/v1/cross-validations/{cv_id}"): R(
        A.VIEWER, "id", url="/api/v1/cross-validations/{cross_validation}"
    ),
    # Its folds have not run: an allowed caller hears that the fold is still queued.
    ("POST", "/api/v1/cross-validations/{cv_id}/register"): R(
        A.EDITOR,
        "id",
        409,
        url="/api/v1/cross-validations/{cross_validation}/register",
        json={"fold": 1},
    ),
    ("POST", "/api/v1/cross-validations/{cv_id}/final-fit"): R(
        A.EDITOR,
        "id",
        202,
        url="/api/v1/cross-validations/{cross_validation}/final-fit",
        consumes="cross_validation",
    ),
    # One model in the owner's workspace: a vote of it against itself is the 400 that says so.
    ("POST", "/api/v1/arena/votes"): R(
        A.EDITOR,
        ok=400,
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "model_a": "{serving_name}",
            "model_b": "{serving_name}",
            "answer_a": "x",
            "answer_b": "y",
            "winner": "a",
        },
    ),
    # No decisive vote in the owner's workspace: 400 saying so.
    ("POST", "/api/v1/arena/votes/dataset"): R(A.EDITOR, ok=400),
    ("GET", "/api/v1/arena/votes"): R(A.VIEWER, "list"),
    ("GET", "/api/v1/arena/leaderboard"): R(A.VIEWER, "list"),
    ("GET", "/api/v1/queue"): R(A.VIEWER, "list"),
    ("GET", "/api/v1/quotas"): R(A.VIEWER, "list"),
    ("PUT", "/api/v1/quotas"): R(
        A.OWNER, json={"concurrent_runs": None, "gpu_hours_per_month": None}
    ),
    ("GET", "/api/v1/runs/{run_id}/metrics"): R(A.VIEWER, "id", url="/api/v1/runs/{run}/metrics"),
    ("GET", "/api/v1/runs/{run_id}/events"): R(A.VIEWER, "id", url="/api/v1/runs/{run}/events"),
    ("GET", "/api/v1/runs/{run_id}/checkpoints"): R(
        A.VIEWER, "id", url="/api/v1/runs/{finished_run}/checkpoints"
    ),
    ("WS", "/ws/runs/{run_id}"): R(A.VIEWER, "id", url="/ws/runs/{run}"),
    ("GET", "/api/v1/runs/{run_id}/metrics/download"): R(
        A.VIEWER, "id", url="/api/v1/runs/{run}/metrics/download?format=json"
    ),
    ("GET", "/api/v1/compare"): R(A.VIEWER, "id", url="/api/v1/compare?run_ids={run}"),
    ("GET", "/api/v1/compare/series"): R(
        A.VIEWER, "id", url="/api/v1/compare/series?run_ids={run}&run_ids={finished_run}"
    ),
    # --- registry and deployments -----------------------------------------------------------
    ("GET", "/api/v1/models"): R(A.VIEWER, "list"),
    ("GET", "/api/v1/model-versions/{version_id}"): R(
        A.VIEWER, "id", url="/api/v1/model-versions/{version}"
    ),
    # Registering any checkpoint (the owner's is registered already: 200 with its version).
    ("POST", "/api/v1/models/versions"): R(A.EDITOR, "id", json={"checkpoint_id": "{checkpoint}"}),
    # Imports: path imports are off here and a .bin upload is a pickle: both a clear 400.
    ("POST", "/api/v1/models/import"): R(A.EDITOR, ok=400, json={"name": "imp", "path": "m"}),
    ("POST", "/api/v1/models/import/upload"): R(
        A.EDITOR, ok=400, files="model.bin", form={"name": "imp"}
    ),
    # Editors move versions between none/staging/archived; production is the owner's
    # (tests/registry/test_versions_and_stages.py); moving to the current stage is a no-op.
    ("POST", "/api/v1/model-versions/{version_id}/stage"): R(
        A.EDITOR, "id", url="/api/v1/model-versions/{version}/stage", json={"stage": "staging"}
    ),
    ("GET", "/api/v1/model-versions/{version_id}/history"): R(
        A.VIEWER, "id", url="/api/v1/model-versions/{version}/history"
    ),
    ("PUT", "/api/v1/model-versions/{version_id}/tags"): R(
        A.EDITOR, "id", url="/api/v1/model-versions/{version}/tags", json={"tags": ["matrix"]}
    ),
    ("GET", "/api/v1/model-versions/{version_id}/download"): R(
        A.VIEWER, "id", url="/api/v1/model-versions/{version}/download"
    ),
    ("POST", "/api/v1/model-versions/{version_id}/exports"): R(
        A.EDITOR, "id", 202, url="/api/v1/model-versions/{version}/exports", json={"kind": "onnx"}
    ),
    ("GET", "/api/v1/model-versions/{version_id}/exports"): R(
        A.VIEWER, "id", url="/api/v1/model-versions/{version}/exports"
    ),
    ("GET", "/api/v1/model-exports/{export_id}"): R(
        A.VIEWER, "id", url="/api/v1/model-exports/{export}"
    ),
    # The export is still queued: a 409 that says so.
    ("GET", "/api/v1/model-exports/{export_id}/download"): R(
        A.VIEWER, "id", 409, url="/api/v1/model-exports/{export}/download"
    ),
    ("POST", "/api/v1/model-versions/{version_id}/evaluations"): R(
        A.EDITOR,
        "id",
        202,
        url="/api/v1/model-versions/{version}/evaluations",
        json={"dataset_id": "{dataset}"},
    ),
    # The matrix's upload is text rows, not a task file: an allowed caller gets the 400 that
    # names the missing prompt (tests/registry/test_harness_evaluation.py runs real ones).
    ("POST", "/api/v1/model-versions/{version_id}/harness-evaluations"): R(
        A.EDITOR,
        "id",
        400,
        url="/api/v1/model-versions/{version}/harness-evaluations",
        files="tasks.jsonl",
    ),
    # The owner's workspace has no arena votes: an allowed caller hears there is nothing to judge.
    ("POST", "/api/v1/model-versions/{version_id}/judge-evaluations"): R(
        A.EDITOR,
        "id",
        400,
        url="/api/v1/model-versions/{version}/judge-evaluations",
        json={"mode": "pairwise"},
    ),
    ("GET", "/api/v1/model-versions/{version_id}/evaluations"): R(
        A.VIEWER, "id", url="/api/v1/model-versions/{version}/evaluations"
    ),
    ("GET", "/api/v1/evaluations/{evaluation_id}"): R(
        A.VIEWER, "id", url="/api/v1/evaluations/{evaluation}"
    ),
    ("GET", "/api/v1/evaluations/{evaluation_id}/figures"): R(
        A.VIEWER, "id", url="/api/v1/evaluations/{evaluation}/figures"
    ),
    ("GET", "/api/v1/models/{model_id}/comparison"): R(
        A.VIEWER, "id", url="/api/v1/models/{model}/comparison"
    ),
    ("GET", "/api/v1/deployments"): R(A.VIEWER, "list"),
    ("POST", "/api/v1/deployments"): R(
        A.EDITOR, "id", json={"model_version_id": "{version}"}, inference=True
    ),
    ("GET", "/api/v1/deployments/{deployment_id}"): R(
        A.VIEWER, "id", url="/api/v1/deployments/{deployment}"
    ),
    ("DELETE", "/api/v1/deployments/{deployment_id}"): R(
        A.EDITOR, "id", url="/api/v1/deployments/{deployment}", consumes="deployment"
    ),
    ("PATCH", "/api/v1/deployments/{deployment_id}"): R(
        A.EDITOR, "id", url="/api/v1/deployments/{deployment}", json={"replicas": 1}
    ),
    # The owner's deployment already serves {version}: allowed callers reach that check (409).
    ("POST", "/api/v1/deployments/{deployment_id}/redeploy"): R(
        A.EDITOR,
        "id",
        409,
        url="/api/v1/deployments/{deployment}/redeploy",
        json={"model_version_id": "{version}"},
    ),
    ("POST", "/api/v1/deployments/{deployment_id}/predict"): R(
        A.VIEWER,
        "id",
        url="/api/v1/deployments/{deployment}/predict",
        json={"inputs": "hello"},
        inference=True,
    ),
    # --- the OpenAI facade ------------------------------------------------------------------
    ("GET", "/v1/files"): R(A.VIEWER, "list"),
    ("POST", "/v1/files"): R(A.EDITOR, files="train.jsonl", form={"purpose": "fine-tune"}),
    ("GET", "/v1/files/{file_id}"): R(A.VIEWER, "id", url="/v1/files/file-{dataset}"),
    ("GET", "/v1/files/{file_id}/content"): R(
        A.VIEWER, "id", url="/v1/files/file-{dataset}/content"
    ),
    ("DELETE", "/v1/files/{file_id}"): R(
        A.EDITOR, "id", url="/v1/files/file-{dataset}", consumes="dataset"
    ),
    ("GET", "/v1/fine_tuning/jobs"): R(A.VIEWER, "list"),
    ("POST", "/v1/fine_tuning/jobs"): R(
        A.EDITOR, "id", json={"model": "scratch-tiny", "training_file": "file-{dataset}"}
    ),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}"): R(
        A.VIEWER, "id", url="/v1/fine_tuning/jobs/ftjob-{run}"
    ),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel"): R(
        A.EDITOR, "id", url="/v1/fine_tuning/jobs/ftjob-{run}/cancel", consumes="run"
    ),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause"): R(
        A.EDITOR, "id", url="/v1/fine_tuning/jobs/ftjob-{run}/pause", consumes="run"
    ),
    # {run} is queued, not paused: allowed callers reach that check (409).
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/resume"): R(
        A.EDITOR, "id", 409, url="/v1/fine_tuning/jobs/ftjob-{run}/resume"
    ),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events"): R(
        A.VIEWER, "id", url="/v1/fine_tuning/jobs/ftjob-{run}/events"
    ),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints"): R(
        A.VIEWER, "id", url="/v1/fine_tuning/jobs/ftjob-{finished_run}/checkpoints"
    ),
    ("GET", "/v1/batches"): R(A.VIEWER, "list"),
    ("POST", "/v1/batches"): R(
        A.EDITOR,
        "id",
        json={
            "input_file_id": "file-raw-{batch_file}",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    ),
    ("GET", "/v1/batches/{batch}"): R(A.VIEWER, "id", url="/v1/batches/batch_{batch}"),
    ("POST", "/v1/batches/{batch}/cancel"): R(
        A.EDITOR, "id", url="/v1/batches/batch_{batch}/cancel", consumes="batch"
    ),
    ("GET", "/v1/models"): R(A.VIEWER, "list"),
    ("GET", "/v1/models/{model}"): R(A.VIEWER, "id", url="/v1/models/{serving_name}"),
    ("POST", "/v1/chat/completions"): R(
        A.VIEWER, "id", json={"model": "{serving_name}", "messages": CHAT}, inference=True
    ),
    ("POST", "/v1/completions"): R(
        A.VIEWER, "id", json={"model": "{serving_name}", "prompt": "hello"}, inference=True
    ),
    ("POST", "/v1/embeddings"): R(
        A.VIEWER, "id", json={"model": "{serving_name}", "input": "hello"}, inference=True
    ),
    # --- pages ------------------------------------------------------------------------------
    ("GET", "/setup"): R(A.PUBLIC, public=(303, 303)),
    ("POST", "/setup"): R(
        A.PUBLIC, public=(303, 303), form={"email": "second@example.com", "password": PASSWORD}
    ),
    ("GET", "/login"): R(A.PUBLIC, public=(200, 303)),
    ("POST", "/login"): R(
        A.PUBLIC, public=(303, 303), form={"email": "viewer@example.com", "password": PASSWORD}
    ),
    ("POST", "/logout"): R(A.SIGNED_IN, ok=303, consumes="browser"),
    ("POST", "/workspace"): R(A.VIEWER, "id", 303, form={"workspace_id": "{workspace}"}),
    ("GET", "/"): R(A.VIEWER, "list"),
    # --- dataset preparation (versions, model view) ------------------------------------------
    ("POST", "/api/v1/datasets/{dataset_id}/versions"): R(
        A.EDITOR,
        "id",
        202,
        url="/api/v1/datasets/{prep_dataset}/versions",
        json={"parent_version_id": "{prep_version}", "recipe": {"steps": [{"step": "nfkc"}]}},
    ),
    ("GET", "/api/v1/datasets/{dataset_id}/versions/{version_id}/model-view"): R(
        A.VIEWER, "id", url="/api/v1/datasets/{prep_dataset}/versions/{prep_version}/model-view"
    ),
    ("POST", "/api/v1/datasets/{dataset_id}/versions/{version_id}/model-view"): R(
        A.VIEWER,
        "id",
        202,
        url="/api/v1/datasets/{prep_dataset}/versions/{prep_version}/model-view",
        json={"max_length": 64},
    ),
    ("GET", "/datasets/{dataset_id}/versions-panel"): R(
        A.VIEWER, "id", url="/datasets/{prep_dataset}/versions-panel"
    ),
    ("POST", "/datasets/{dataset_id}/versions"): R(
        A.EDITOR,
        "id",
        url="/datasets/{prep_dataset}/versions",
        form={"parent_version_id": "{prep_version}", "step_nfkc": "on"},
    ),
    ("POST", "/datasets/{dataset_id}/versions/generate"): R(
        A.EDITOR,
        "id",
        url="/datasets/{prep_dataset}/versions/generate",
        form={"version_id": "{prep_version}", "model": "{serving_name}", "max_tokens": "8"},
    ),
    ("GET", "/datasets/{dataset_id}/versions/{version_id}/model-view"): R(
        A.VIEWER, "id", url="/datasets/{prep_dataset}/versions/{prep_version}/model-view"
    ),
    ("POST", "/datasets/{dataset_id}/versions/{version_id}/model-view"): R(
        A.VIEWER,
        "id",
        url="/datasets/{prep_dataset}/versions/{prep_version}/model-view",
        form={"max_length": "64"},
    ),
    ("GET", "/datasets"): R(A.VIEWER, "list"),
    ("POST", "/datasets"): R(A.EDITOR, ok=303, files="corpus.jsonl"),
    ("GET", "/datasets/{dataset_id}"): R(A.VIEWER, "id", url="/datasets/{dataset}"),
    ("GET", "/datasets/{dataset_id}/rows"): R(A.VIEWER, "id", url="/datasets/{dataset}/rows?q=cat"),
    ("POST", "/datasets/{dataset_id}/delete"): R(
        A.EDITOR, "id", 303, url="/datasets/{dataset}/delete", consumes="dataset"
    ),
    ("GET", "/runs"): R(A.VIEWER, "list"),
    ("GET", "/workers"): R(A.VIEWER),
    ("GET", "/queue"): R(A.VIEWER, "list"),
    ("GET", "/sweeps"): R(A.VIEWER, "list"),
    ("POST", "/sweeps"): R(
        A.EDITOR,
        "id",
        303,
        form={"dataset_id": "{dataset}", "search_space": '{{"seed": {{"values": [4]}}}}'},
    ),
    ("GET", "/sweeps/{sweep_id}"): R(A.VIEWER, "id", url="/sweeps/{sweep}"),
    ("POST", "/sweeps/{sweep_id}/cancel"): R(
        A.EDITOR, "id", 303, url="/sweeps/{sweep}/cancel", consumes="sweep"
    ),
    ("POST", "/queue/runs/{run_id}/move"): R(
        A.EDITOR,
        "id",
        303,
        url="/queue/runs/{run}/move",
        form={"direction": "up"},
        consumes="run",
    ),
    ("POST", "/queue/runs/{run_id}/priority"): R(
        A.EDITOR,
        "id",
        303,
        url="/queue/runs/{run}/priority",
        form={"priority": "low"},
        consumes="run",
    ),
    ("POST", "/queue/runs/{run_id}/cancel"): R(
        A.EDITOR, "id", 303, url="/queue/runs/{run}/cancel", consumes="run"
    ),
    ("GET", "/runs/new"): R(A.EDITOR),
    ("POST", "/runs"): R(A.EDITOR, "id", 303, form={"dataset_id": "{dataset}"}),
    ("POST", "/runs/estimate"): R(A.VIEWER, form={"batch_size": "4"}),
    ("GET", "/runs/{run_id}/config"): R(A.VIEWER, "id", url="/runs/{run}/config"),
    ("POST", "/runs/{run_id}/config"): R(
        A.EDITOR,
        "id",
        303,
        url="/runs/{run}/config",
        form={"config_text": "dataset_id: {dataset}\nconfig: {{max_steps: 2}}"},
    ),
    ("GET", "/runs/{run_id}"): R(A.VIEWER, "id", url="/runs/{run}"),
    ("GET", "/compare"): R(A.VIEWER, "id", url="/compare?run={run}&run={finished_run}"),
    ("POST", "/runs/{run_id}/cancel"): R(
        A.EDITOR, "id", 303, url="/runs/{run}/cancel", consumes="run"
    ),
    ("POST", "/runs/{run_id}/stop"): R(
        A.EDITOR, "id", 303, url="/runs/{running_run}/stop", consumes="running_run"
    ),
    ("POST", "/runs/{run_id}/pause"): R(
        A.EDITOR, "id", 303, url="/runs/{run}/pause", consumes="run"
    ),
    ("POST", "/runs/{run_id}/resume"): R(
        A.EDITOR, "id", 303, url="/runs/{failed_run}/resume", consumes="failed_run"
    ),
    ("GET", "/models"): R(A.VIEWER, "list"),
    ("POST", "/models/versions/{version_id}/deploy"): R(
        A.EDITOR, "id", url="/models/versions/{version}/deploy", inference=True
    ),
    ("GET", "/models/versions/{version_id}"): R(A.VIEWER, "id", url="/models/versions/{version}"),
    ("POST", "/models/versions/{version_id}/stage"): R(
        A.EDITOR, "id", 303, url="/models/versions/{version}/stage", form={"stage": "staging"}
    ),
    ("POST", "/models/versions/{version_id}/tags"): R(
        A.EDITOR, "id", 303, url="/models/versions/{version}/tags", form={"tags": "matrix"}
    ),
    ("POST", "/models/versions/{version_id}/exports"): R(
        A.EDITOR, "id", 303, url="/models/versions/{version}/exports", form={"kind": "onnx"}
    ),
    ("POST", "/models/versions/{version_id}/evaluations"): R(
        A.EDITOR,
        "id",
        303,
        url="/models/versions/{version}/evaluations",
        form={"dataset_id": "{dataset}"},
    ),
    ("POST", "/models/versions/{version_id}/harness-evaluations"): R(
        A.EDITOR,
        "id",
        400,
        url="/models/versions/{version}/harness-evaluations",
        files="tasks.jsonl",
    ),
    ("GET", "/arena"): R(A.VIEWER, "list"),
    # The owner's workspace has one chat model: a battle needs two (400 saying so).
    ("POST", "/arena/battle"): R(A.EDITOR, ok=400, json={}),
    # No votes in the owner's workspace: the judge form's 400 says there is nothing to judge.
    ("POST", "/arena/judge"): R(A.EDITOR, "id", 400, form={"model": "{serving_name}"}),
    # No decisive vote in the owner's workspace: 400 saying so.
    ("POST", "/arena/preference-dataset"): R(A.EDITOR, ok=400),
    ("POST", "/arena/stream"): R(
        A.EDITOR,
        ok=400,
        json={"battle": "forged", "side": "a", "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("POST", "/arena/vote"): R(
        A.EDITOR,
        ok=400,
        json={
            "battle": "forged",
            "messages": [{"role": "user", "content": "hi"}],
            "answer_a": "x",
            "answer_b": "y",
            "winner": "a",
        },
    ),
    ("GET", "/cross-validations"): R(A.VIEWER, "list"),
    ("POST", "/cross-validations"): R(
        A.EDITOR,
        "id",
        303,
        form={"dataset_id": "{dataset}", "k": "2", "config": '{{"max_steps": 2}}'},
    ),
    ("GET", "/cross-validations/{cv_id}"): R(
        A.VIEWER, "id", url="/cross-validations/{cross_validation}"
    ),
    ("POST", "/cross-validations/{cv_id}/register"): R(
        A.EDITOR,
        "id",
        409,
        url="/cross-validations/{cross_validation}/register",
        form={"fold": "1"},
    ),
    ("POST", "/cross-validations/{cv_id}/final-fit"): R(
        A.EDITOR,
        "id",
        303,
        url="/cross-validations/{cross_validation}/final-fit",
        consumes="cross_validation",
    ),
    ("POST", "/runs/{run_id}/checkpoints/{checkpoint_id}/register"): R(
        A.EDITOR, "id", 303, url="/runs/{finished_run}/checkpoints/{checkpoint}/register"
    ),
    # A .bin upload is a pickle: the form comes back with the reason (400).
    ("POST", "/models/import"): R(A.EDITOR, ok=400, files="model.bin", form={"name": "imp"}),
    ("GET", "/deployments"): R(A.VIEWER, "list"),
    ("POST", "/deployments"): R(
        A.EDITOR, "id", form={"model_version_id": "{version}"}, inference=True
    ),
    ("POST", "/deployments/{deployment_id}/scale"): R(
        A.EDITOR, "id", 303, url="/deployments/{deployment}/scale", form={"replicas": "1"}
    ),
    ("POST", "/deployments/{deployment_id}/redeploy"): R(
        A.EDITOR,
        "id",
        409,
        url="/deployments/{deployment}/redeploy",
        form={"model_version_id": "{version}"},
    ),
    ("POST", "/deployments/{deployment_id}/stop"): R(
        A.EDITOR, "id", 303, url="/deployments/{deployment}/stop", consumes="deployment"
    ),
    ("GET", "/playground"): R(A.VIEWER, "list"),
    # Errors travel inside the event stream (200), also "no such model" for a non-member.
    ("POST", "/playground/stream"): R(
        A.VIEWER,
        "id",
        json={"model": "{serving_name}", "messages": CHAT},
        inference=True,
        stranger=200,
        stranger_says="does not exist in this workspace",
    ),
    ("GET", "/playground/classify"): R(A.VIEWER, "list"),
    # The owner's registered version is a chat model: "not a classifier" (400), for everyone.
    ("POST", "/playground/classify"): R(
        A.VIEWER,
        "id",
        form={"model": "{serving_name}", "text": "hello"},
        inference=True,
        stranger=400,
        stranger_says="is not a classifier in this workspace",
    ),
    ("GET", "/admin/users"): R(A.ADMIN),
    ("POST", "/admin/users"): R(
        A.ADMIN, form={"email": "{new_email}", "password": PASSWORD}, consumes="new_email"
    ),
    ("POST", "/admin/users/{user_id}/active"): R(
        A.ADMIN, url="/admin/users/{member}/active", form={"active": "true"}
    ),
    ("POST", "/admin/users/{user_id}/password"): R(
        A.ADMIN,
        url="/admin/users/{member}/password",
        form={"password": PASSWORD},
        consumes="member",
    ),
    ("GET", "/admin/workspaces"): R(A.ADMIN),
    ("POST", "/admin/workspaces"): R(
        A.ADMIN, form={"name": "team c", "owner_email": "admin@example.com"}
    ),
    ("GET", "/settings/tokens"): R(A.SIGNED_IN, "list"),
    ("POST", "/settings/tokens"): R(A.SIGNED_IN, form={"name": "matrix"}),
    ("POST", "/settings/tokens/{token_id}/revoke"): R(
        A.OWN, "id", 303, url="/settings/tokens/{token}/revoke", consumes="token"
    ),
    ("GET", "/settings/members"): R(A.VIEWER, "list"),
    ("GET", "/settings/audit"): R(A.OWNER, "list"),
    ("POST", "/settings/members"): R(
        A.OWNER, form={"email": "{member_email}", "role": "viewer"}, consumes="member_email"
    ),
    ("POST", "/settings/members/{user_id}/role"): R(
        A.OWNER,
        "id",
        303,
        url="/settings/members/{member}/role",
        form={"role": "editor"},
        consumes="member",
    ),
    ("POST", "/settings/members/{user_id}/remove"): R(
        A.OWNER, "id", 303, url="/settings/members/{member}/remove", consumes="member"
    ),
}

ANONYMOUS_OK = {
    ("GET", "/healthz"),
    ("POST", "/api/v1/setup"),
    ("POST", "/api/v1/session"),
    ("GET", "/setup"),
    ("POST", "/setup"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("GET", "/static/{path}"),
}

# What no one outside the owner's workspace may see, and what only the owner may see.
WORKSPACE_SECRETS = (
    DATASET_NAME,
    DATASET_FILE,
    RUN_NAME,
    RUN_SUFFIX,
    "owner@example.com",
    "owner-s-workspace",
    "owner's workspace",
    "owner&#39;s workspace",
)
PERSONAL_SECRETS = (TOKEN_NAME,)
# What server administration shows an administrator by design: every account's e-mail and
# every workspace's name and owners (never a workspace's data, nor anyone's tokens).
ACCOUNT_FACTS = (
    "owner@example.com",
    "owner-s-workspace",
    "owner's workspace",
    "owner&#39;s workspace",
)

LOGIN = "sign in"
OK = "allowed"


def app_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route, from the app's own table (included routers flattened)."""
    keys: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.router.routes):
        if isinstance(route.route, WebSocketRoute):
            keys.add(("WS", route.path_format))
        elif isinstance(route.route, Mount):
            keys.add(("GET", route.path_format))  # static files: GET (and HEAD)
        else:
            keys.update((method, route.path_format) for method in route.methods)
    return keys


def surface(path: str) -> str:
    if path.startswith("/ws/"):
        return "websocket"
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith(("/api/", "/static/")) or path in (
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/docs",
    ):
        return "json"
    return "page"


def verdict(rule: Rule, who: str) -> str | int:
    """What `who` must get from a route under `rule`: OK, LOGIN, or a status code."""
    if rule.access is Access.PUBLIC:
        assert rule.public is not None
        return rule.public[who != "anonymous"]
    if who == "anonymous":
        return LOGIN
    if rule.access is Access.SIGNED_IN:
        return OK
    if rule.access is Access.OWN:
        return OK if who == "owner" else 404
    if rule.access is Access.ADMIN:
        return OK if who == "admin" else 403
    if who in STRANGERS:
        # On the owner's ids: as if they did not exist. Elsewhere they act in their own
        # workspace, which they own.
        return rule.stranger if rule.target == "id" else OK
    return OK if MEMBER_RANK[who] >= ROLE_RANK[rule.access] else 403


def fill(template: Any, ids: dict[str, Any]) -> Any:
    if isinstance(template, str):
        whole = re.fullmatch(r"\{(\w+)\}", template)
        return ids[whole.group(1)] if whole else template.format(**ids)
    if isinstance(template, dict):
        return {key: fill(value, ids) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(value, ids) for value in template]
    return template


def fresh(site: Site, kind: str) -> Any:
    """A new thing of the owner's for a call that uses one up."""
    return {
        "dataset": site.new_dataset,
        "run": site.new_run,
        "sweep": site.new_sweep,
        "cross_validation": site.new_cross_validation,
        "upload": site.new_upload,
        "sent_upload": site.new_sent_upload,
        "running_run": lambda: site.new_run_in("running"),
        "failed_run": lambda: site.new_run_in("failed"),
        "deployment": site.new_deployment,
        "batch": site.new_batch,
        "token": site.new_token,
        "member_email": site.new_user,
        "member": site.new_member,
        "new_email": lambda: f"{site.unique('created')}@example.com",
    }[kind]()


@dataclass
class Answer:
    status: int | str  # an HTTP status, or "open" / a close code for the websocket
    location: str
    body: str
    json_error_type: str | None = None


def call(site: Site, key: tuple[str, str], rule: Rule, who: str, ids: dict[str, Any]) -> Answer:
    method, path = key
    url = fill(rule.url or path, ids)
    kind = surface(path)
    if kind == "websocket":
        return _websocket(site, who, url)
    kw: dict[str, Any] = {}
    if rule.json is not None:
        kw["json"] = fill(rule.json, ids)
    if rule.form is not None:
        kw["data"] = fill(rule.form, ids)
    if rule.files is not None:
        kw["files"] = upload(rule.files)
    if kind == "page":
        browser = who
        if rule.consumes == "browser" and verdict(rule, who) == OK:
            persona = site.persona(who)
            site.browsers["spare"] = site.sign_in_browser(persona.email, persona.workspace_id)
            browser = "spare"
        response = site.page(browser, method, url, **kw)
    else:
        response = site.api(None if who == "anonymous" else who, method, url, **kw)
    return _answer(response)


def _answer(response: httpx.Response) -> Answer:
    error_type = None
    if response.content and response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error_type = body["error"].get("type")
    return Answer(
        response.status_code, response.headers.get("location", ""), response.text, error_type
    )


def _websocket(site: Site, who: str, url: str) -> Answer:
    """Browsers connect with their cookie; what they get first, or how they were turned away."""
    try:
        with site.client.websocket_connect(url, headers=site.browsers[who].headers) as ws:
            first = ws.receive_text()
            return Answer("open", "", first)
    except WebSocketDisconnect as exc:
        return Answer(exc.code, "", exc.reason or "")


def assert_owner_things_untouched(site: Site) -> None:
    """A refused request changed nothing of the owner's (checked in the database)."""
    from sqlalchemy import func, select

    from app.db.models import ApiToken, Dataset, Deployment, Membership, Run, User
    from app.db.session import session_scope

    ids = site.ids
    with session_scope() as session:
        assert session.get(Dataset, ids["dataset"]) is not None
        run = session.get(Run, ids["run"])
        assert run is not None and run.status == "queued" and not run.cancel_requested
        deployment = session.get(Deployment, ids["deployment"])
        assert deployment is not None and deployment.status != "stopped"
        token = session.get(ApiToken, ids["token"])
        assert token is not None and token.revoked_at is None
        assert session.scalar(select(User).where(User.email == ids["new_email"])) is None
        memberships = session.scalar(
            select(func.count())
            .select_from(Membership)
            .join(User, User.id == Membership.user_id)
            .where(User.email == ids["member_email"])
        )
        assert memberships == 1, "a refused invitation added a membership"
        member_role = session.scalar(
            select(Membership.role).where(
                Membership.user_id == ids["member"], Membership.workspace_id == ids["workspace"]
            )
        )
        assert member_role == "viewer", "a refused role change or removal touched a member"


def leaked(
    site: Site, who: str, answer: Answer, sent: str, administration: bool = False
) -> list[str]:
    """The owner's secrets in an answer to someone who may not see them (unless they sent them).

    `administration`: an administrator's account pages, which list accounts and workspaces."""
    secrets = () if who == "owner" else PERSONAL_SECRETS
    if who in (*STRANGERS, "anonymous"):
        secrets = (*WORKSPACE_SECRETS, *secrets)
    if administration and who == "admin":
        secrets = tuple(s for s in secrets if s not in ACCOUNT_FACTS)
    return [s for s in secrets if s in answer.body and s not in sent]


def check(rule: Rule, kind: str, expected: str | int, answer: Answer) -> None:
    got = answer.status
    context = f"expected {expected}, got {got}: {answer.body[:300]}"
    if expected == LOGIN:
        if kind == "websocket":
            assert got == 4401, context
        elif kind == "page":
            assert got == 303 and answer.location.startswith("/login"), context
        else:
            assert got == 401, context
            if kind == "openai":
                assert answer.json_error_type == "authentication_error", context
    elif expected == OK:
        if kind == "websocket":
            assert got == "open", context
        elif rule.inference:
            assert got not in (401, 403, 404) and (got < 500 or got == 503), context  # type: ignore[operator]
        else:
            assert got == rule.ok, context
    elif kind == "websocket":
        assert got == 4000 + int(expected), context
    else:
        assert got == expected, context
        if kind == "page" and expected in (403, 404):
            assert "<html" in answer.body, "a refused page should be an HTML error page"


CASES = [
    pytest.param(key, who, id=f"{key[0]} {key[1]} as {who}") for key in RULES for who in PERSONAS
]


def test_every_route_has_a_rule_and_every_rule_a_route(site: Site) -> None:
    routes = app_routes(site.client.app)
    assert routes - RULES.keys() == set(), "routes without an authorization rule"
    assert RULES.keys() - routes == set(), "rules for routes that no longer exist"


def test_only_health_sign_in_and_static_files_answer_anonymous_callers() -> None:
    public = {key for key, rule in RULES.items() if rule.access is Access.PUBLIC}
    assert public == ANONYMOUS_OK


# The writes a viewer may make, each for a reason: everything else that is not a GET needs a
# higher role. A new entry here is a deliberate decision, not an accident of the rule table.
VIEWER_WRITES = {
    ("DELETE", "/api/v1/session"): "signing out",
    ("POST", "/logout"): "signing out",
    ("POST", "/api/v1/tokens"): "their own API tokens",
    ("DELETE", "/api/v1/tokens/{token_id}"): "their own API tokens",
    ("POST", "/settings/tokens"): "their own API tokens",
    ("POST", "/settings/tokens/{token_id}/revoke"): "their own API tokens",
    ("POST", "/api/v1/workspaces"): "a workspace of their own, which they then own",
    ("POST", "/workspace"): "choosing which of their workspaces to look at",
    ("POST", "/v1/chat/completions"): "using a registered model (it may be loaded on demand)",
    ("POST", "/v1/completions"): "using a registered model (it may be loaded on demand)",
    ("POST", "/v1/embeddings"): "using a registered model (it may be loaded on demand)",
    ("POST", "/playground/stream"): "using a registered model (it may be loaded on demand)",
    ("POST", "/playground/classify"): "using a registered classifier (loaded on demand)",
    # Only editors can start a chunked upload; these act on the caller's own upload.
    ("PUT", "/api/v1/uploads/{upload_id}"): "their own chunked upload",
    ("POST", "/api/v1/uploads/{upload_id}/complete"): "their own chunked upload",
    ("DELETE", "/api/v1/uploads/{upload_id}"): "their own chunked upload",
    ("POST", "/api/v1/uploads/{upload_id}/import-model"): "their own chunked upload",
    ("POST", "/api/v1/deployments/{deployment_id}/predict"): "using a deployed classifier",
    # Computing a model view writes only a derived JSON artifact; the data is theirs to read.
    ("POST", "/api/v1/datasets/{dataset_id}/versions/{version_id}/model-view"): "a model view",
    ("POST", "/datasets/{dataset_id}/versions/{version_id}/model-view"): "a model view",
    # An estimate is arithmetic over the caller's own form; only editors start a calibration.
    ("POST", "/api/v1/runs/estimate"): "a launch estimate",
    ("POST", "/runs/estimate"): "a launch estimate",
}


def test_viewers_may_write_nothing_but_what_is_listed() -> None:
    viewer_ok = {
        key
        for key, rule in RULES.items()
        if key[0] not in ("GET", "WS")
        and rule.access not in (Access.PUBLIC, Access.ADMIN)
        and (rule.access is Access.OWN or verdict(rule, "viewer") == OK)
    }
    assert viewer_ok == VIEWER_WRITES.keys()


@pytest.mark.parametrize(("key", "who"), CASES)
def test_each_persona_gets_what_the_rule_says(site: Site, key: tuple[str, str], who: str) -> None:
    rule = RULES[key]
    expected = verdict(rule, who)
    ids = dict(site.ids)
    if expected == OK and rule.consumes in ids:
        ids[rule.consumes] = fresh(site, rule.consumes)
    answer = call(site, key, rule, who, ids)
    check(rule, surface(key[1]), expected, answer)
    sent = str(fill([rule.url, rule.json, rule.form], ids))
    assert leaked(site, who, answer, sent, rule.access is Access.ADMIN) == []
    if who in STRANGERS and rule.stranger_says:
        assert rule.stranger_says in answer.body
    if expected != OK or rule.access is Access.PUBLIC:
        assert_owner_things_untouched(site)


WORKSPACE_ROUTES = [
    pytest.param(key, id=f"{key[0]} {key[1]}")
    for key, rule in RULES.items()
    if rule.access in ROLE_RANK and surface(key[1]) != "page"
]


@pytest.mark.parametrize("key", WORKSPACE_ROUTES)
def test_naming_another_teams_workspace_is_a_404_on_every_workspace_route(
    site: Site, key: tuple[str, str]
) -> None:
    """An outsider who names the owner's workspace (header or ?workspace=) learns nothing."""
    rule = RULES[key]
    workspace = str(site.ids["workspace"])
    if surface(key[1]) == "websocket":
        url = fill(rule.url, site.ids) + f"?workspace={workspace}"
        headers = {"Authorization": f"Bearer {site.team.outsider.token}"}
        try:
            with site.client.websocket_connect(url, headers=headers) as ws:
                ws.receive_text()
            pytest.fail("the websocket opened for a non-member")
        except WebSocketDisconnect as exc:
            assert exc.code == 4404
        return
    kw: dict[str, Any] = {"headers": {"X-LLMIDE-Workspace": workspace}}
    if rule.json is not None:
        kw["json"] = fill(rule.json, site.ids)
    if rule.form is not None:
        kw["data"] = fill(rule.form, site.ids)
    if rule.files is not None:
        kw["files"] = upload(rule.files)
    answer = _answer(site.api("outsider", key[0], fill(rule.url or key[1], site.ids), **kw))
    assert answer.status == 404, answer.body[:300]
    assert_owner_things_untouched(site)
