"""A harness evaluation in the product gives the accuracy lm_eval itself reports when it is
pointed at the product's /v1 (`local-completions`: token-array prompts, echo, logprobs) for
the same version: the product's in-process scoring and the served model agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.registry.test_harness_evaluation import MC_ROWS, import_tiny_lm, write_lm_eval_tasks
from tests.serving.test_openai_clients import LiveV1, live_v1  # noqa: F401 (fixture)


def test_a_multiple_choice_task_scores_the_same_in_the_product_and_through_v1(
    live_v1: LiveV1,  # noqa: F811
    installation: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    from workers.registry_tasks import evaluate_version

    team = live_v1.team
    imports = tmp_path / "imports"
    version = import_tiny_lm(team, imports, monkeypatch)

    # In the product: the task file uploaded, lm_eval's HFLM on the version's weights.
    content = "".join(json.dumps(r) + "\n" for r in MC_ROWS)
    queued = team.editor.post(
        f"/api/v1/model-versions/{version['id']}/harness-evaluations",
        files={"file": ("quiz.jsonl", content.encode())},
        data={"num_fewshot": "1"},
    )
    assert queued.status_code == 202, queued.text
    assert evaluate_version.apply(args=[queued.json()["id"]]).get() == "succeeded"
    figures = team.viewer.get(f"/api/v1/evaluations/{queued.json()['id']}/figures").json()
    ours = {t["task"]: t["metrics"]["acc"]["value"] for t in figures["figures"]["tasks"]}

    # lm_eval from outside: its own task YAML and JSON loader, the product's /v1 as the model.
    names = write_lm_eval_tasks(tmp_path, MC_ROWS)
    model = LocalCompletionsAPI(
        model=version["serving_name"],
        base_url=f"{live_v1.base_url}/completions",
        tokenizer=str(imports / "tiny"),
        tokenizer_backend="huggingface",
        header={"Authorization": f"Bearer {live_v1.token}"},
        batch_size=8,
        max_retries=1,
    )
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=names,
        num_fewshot=1,
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        cache_requests=False,
        bootstrap_iters=0,
        random_seed=0,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        fewshot_random_seed=1234,
    )
    assert results is not None
    theirs = {n.removeprefix("user_"): results["results"][n]["acc,none"] for n in names}
    assert ours == pytest.approx(theirs)
