"""Harness evaluations: an uploaded multiple-choice or generation task file runs through
lm-evaluation-harness on the worker, and a multiple-choice task scores exactly what lm_eval
itself reports when someone runs it with their own task YAML on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Team

# Two subjects with a dev row each (the few-shot example), as C-Eval's dev/val files give them.
MC_ROWS = [
    {"subject": subject, "split": "dev" if i == 0 else "test",
     "question": f"{subject}: which is number {i}?",
     "choices": [f"number {i}", f"number {i + 1}", f"letter {i}", "none of them"],
     "answer": i % 4}
    for subject in ("arithmetic", "reading") for i in range(7)
]  # fmt: skip

# The same task as a user of lm_eval would write it: MMLU's template, the file's rows.
MMLU_TEMPLATE = (
    "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}"
    "\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"
)
LM_EVAL_YAML = """
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    dev: {dev}
test_split: test
fewshot_split: dev
output_type: multiple_choice
doc_to_text: "{template}"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""


def import_tiny_lm(team: Team, imports: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A tiny causal LM (1-layer GPT-2, 256 positions) built in `imports`/tiny and imported by
    the editor as a version; the version as the API returns it."""
    from app.core.settings import get_settings
    from tests.inference.test_inference_server import build_tiny_model

    build_tiny_model(imports / "tiny", positions=256)
    monkeypatch.setenv("LLMIDE_IMPORT_DIR", str(imports))
    get_settings.cache_clear()
    created = team.editor.post("/api/v1/models/import", json={"name": "tiny", "path": "tiny"})
    assert created.status_code == 201, created.text
    return dict(created.json())


@pytest.fixture
def lm_version(team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A tiny causal LM (1-layer GPT-2, 256 positions) imported as a version."""
    imports = tmp_path / "imports"
    created = import_tiny_lm(team, imports, monkeypatch)
    return {"id": created["id"], "folder": imports / "tiny"}


def _submit(team: Team, version_id: int, name: str, content: str, **form: str):
    return team.editor.post(
        f"/api/v1/model-versions/{version_id}/harness-evaluations",
        files={"file": (name, content.encode())},
        data=form,
    )


def write_lm_eval_tasks(tasks_dir: Path, rows: list[dict]) -> list[str]:
    """One lm_eval task per subject of `rows`, as its user would write it into `tasks_dir`:
    the subject's test and dev rows as JSONL, a YAML with MMLU's template; the task names."""
    names = []
    for subject in sorted({r["subject"] for r in rows}):
        for split in ("test", "dev"):
            chosen = [r for r in rows if r["subject"] == subject and r["split"] == split]
            (tasks_dir / f"{subject}_{split}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in chosen)
            )
        (tasks_dir / f"{subject}.yaml").write_text(
            LM_EVAL_YAML.format(
                template=MMLU_TEMPLATE,
                task=f"user_{subject}",
                test=tasks_dir / f"{subject}_test.jsonl",
                dev=tasks_dir / f"{subject}_dev.jsonl",
            )
        )
        names.append(f"user_{subject}")
    return names


def _lm_eval_itself(folder: Path, tmp_path: Path, rows: list[dict], num_fewshot: int) -> dict:
    """lm_eval's own run: its hf model on the folder, its task from YAML, its JSON loader."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tasks_dir = tmp_path / "lm_eval_tasks"
    tasks_dir.mkdir()
    names = write_lm_eval_tasks(tasks_dir, rows)
    results = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(folder), "device": "cpu"},
        tasks=names,
        num_fewshot=num_fewshot,
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        bootstrap_iters=0,
        random_seed=0,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        fewshot_random_seed=1234,
    )
    assert results is not None
    return {name.removeprefix("user_"): results["results"][name] for name in names}


def test_a_multiple_choice_task_scores_what_lm_eval_itself_reports_on_the_same_weights(
    team: Team, lm_version: dict, tmp_path: Path
) -> None:
    from workers.registry_tasks import evaluate_version

    content = "".join(json.dumps(r) + "\n" for r in MC_ROWS)
    queued = _submit(team, lm_version["id"], "quiz.jsonl", content, num_fewshot="1")
    assert queued.status_code == 202, queued.text
    body = queued.json()
    assert body["kind"] == "harness" and body["options"]["task_type"] == "multiple_choice"
    assert body["options"]["tasks"] == {"arithmetic": 6, "reading": 6}
    assert evaluate_version.apply(args=[body["id"]]).get() == "succeeded"

    done = team.viewer.get(f"/api/v1/evaluations/{body['id']}").json()
    figures = team.viewer.get(f"/api/v1/evaluations/{body['id']}/figures").json()["figures"]
    ours = {t["task"]: t for t in figures["tasks"]}
    theirs = _lm_eval_itself(lm_version["folder"], tmp_path, MC_ROWS, num_fewshot=1)
    for subject, result in theirs.items():
        assert ours[subject]["metrics"]["acc"]["value"] == pytest.approx(result["acc,none"])
        assert ours[subject]["rows"] == 6
        assert ours[subject]["metrics"]["acc"]["stderr"] is not None
    # Overall: the row-weighted mean of the subjects, as lm_eval aggregates a group.
    mean = sum(r["acc,none"] for r in theirs.values()) / 2
    assert done["metrics"]["acc"] == pytest.approx(mean)
    assert "acc_stderr" in done["metrics"] and done["metrics"]["harness_rows"] == 12
    # Samples show lm_eval's own prompt: the dev example first, then the question.
    first = done["samples"][0]
    assert "Answer:" in first["prompt"] and first["output"] in "ABCD"


def test_a_generation_task_reports_exact_match_bleu_and_rouge_with_a_regex_filter(
    team: Team, lm_version: dict
) -> None:
    from workers.registry_tasks import evaluate_version

    rows = [{"prompt": f"Repeat the word {w}:", "answer": w} for w in ("cat", "dog", "sun")]
    content = "".join(json.dumps(r) + "\n" for r in rows)
    queued = _submit(
        team, lm_version["id"], "echo.jsonl", content,
        metrics="exact_match,bleu,rouge", regex=r"(\w+)", max_new_tokens="4",
    )  # fmt: skip
    assert queued.status_code == 202, queued.text
    assert queued.json()["options"]["task_type"] == "generation"
    assert evaluate_version.apply(args=[queued.json()["id"]]).get() == "succeeded"
    metrics = team.viewer.get(f"/api/v1/evaluations/{queued.json()['id']}").json()["metrics"]
    for name in ("exact_match", "bleu", "rouge"):
        assert 0 <= metrics[name] <= 100 and f"{name}_stderr" in metrics
    assert metrics["harness_rows"] == 3


def test_mmlu_c_eval_and_cmmlu_files_are_read_with_their_own_layouts() -> None:
    from app.services.evaluation.harness_tasks import parse

    mmlu = 'What is 2+2?,3,4,5,6,B\n"Capital of France?",Rome,Paris,Oslo,Bern,B\n'
    parsed = parse(mmlu.encode(), "astronomy_test.csv", task_type=None, name="astronomy")
    assert parsed.task_type == "multiple_choice" and parsed.tasks == {"astronomy": 2}
    assert parsed.rows[0]["choices"] == ["3", "4", "5", "6"] and parsed.rows[0]["answer"] == 1

    ceval = "id,question,A,B,C,D,answer,explanation\n0,1+1=?,1,2,3,4,B,因为\n1,2+2=?,4,5,6,7,A,\n"
    parsed = parse(ceval.encode(), "math_val.csv", task_type=None, name="高等数学")
    assert [r["answer"] for r in parsed.rows] == [1, 0]
    assert parsed.rows[0]["question"] == "1+1=?"

    cmmlu = ",Question,A,B,C,D,Answer\n0,中国的首都是哪里？,上海,北京,广州,深圳,B\n"
    parsed = parse(cmmlu.encode(), "chinese.csv", task_type=None, name="chinese")
    assert parsed.rows[0]["choices"] == ["上海", "北京", "广州", "深圳"]
    assert parsed.rows[0]["answer"] == 1


def test_a_bad_task_file_or_setting_is_refused_at_submission_naming_it(
    team: Team, lm_version: dict
) -> None:
    version_id = lm_version["id"]
    bad_answer = json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5})
    refused = _submit(team, version_id, "bad.jsonl", json.dumps(MC_ROWS[1]) + "\n" + bad_answer)
    assert refused.status_code == 400 and "row 2" in refused.json()["detail"]
    mc = "".join(json.dumps(r) + "\n" for r in MC_ROWS)
    refused = _submit(team, version_id, "quiz.jsonl", mc, metrics="bleu")
    assert refused.status_code == 400 and "metrics" in refused.json()["detail"]
    gen = json.dumps({"prompt": "p", "answer": "a"})
    refused = _submit(team, version_id, "gen.jsonl", gen, regex="(unclosed")
    assert refused.status_code == 400 and "regex" in refused.json()["detail"]
    refused = _submit(team, version_id, "gen.jsonl", gen, num_fewshot="3")
    assert refused.status_code == 400 and "num_fewshot" in refused.json()["detail"]
    refused = _submit(team, version_id, "tasks.exe", gen)
    assert refused.status_code == 400 and ".jsonl" in refused.json()["detail"]
    viewer = team.viewer.post(
        f"/api/v1/model-versions/{version_id}/harness-evaluations",
        files={"file": ("gen.jsonl", gen.encode())},
    )
    assert viewer.status_code == 403
    listed = team.viewer.get(f"/api/v1/model-versions/{version_id}/evaluations").json()
    assert listed == []  # nothing half-made


def test_the_version_page_runs_a_benchmark_and_shows_scores_with_standard_errors(
    team: Team, lm_version: dict
) -> None:
    from tests.signed_in import HTML, sign_in
    from workers.registry_tasks import evaluate_version

    csrf = sign_in(team.editor)
    url = f"/models/versions/{lm_version['id']}"
    page = team.editor.client.get(url, headers=HTML).text
    assert 'data-testid="harness-file"' in page and "No benchmarks yet" in page
    mmlu = "".join(f"Question {i}?,one,two,three,four,{'ABCD'[i % 4]}\n" for i in range(6))
    posted = team.editor.client.post(
        f"{url}/harness-evaluations",
        files={"file": ("astronomy.csv", mmlu.encode())},
        data={"csrf_token": csrf, "num_fewshot": "1", "task_type": ""},
        headers=HTML,
        follow_redirects=False,
    )
    assert posted.status_code == 303, posted.text
    listed = team.editor.get(f"/api/v1/model-versions/{lm_version['id']}/evaluations").json()
    assert evaluate_version.apply(args=[listed[0]["id"]]).get() == "succeeded"
    page = team.editor.client.get(url, headers=HTML).text
    table = page[page.index('data-testid="harness-evaluations"') :]
    assert "astronomy" in table and "1-shot" in table and "±" in table
    # A refusal is shown on the page with its reason, and nothing is queued.
    refused = team.editor.client.post(
        f"{url}/harness-evaluations",
        files={"file": ("astronomy.csv", mmlu.encode())},
        data={"csrf_token": csrf, "metrics": "bleu"},
        headers=HTML,
    )
    assert refused.status_code == 400 and "applies to generation tasks" in refused.text
    listed = team.editor.get(f"/api/v1/model-versions/{lm_version['id']}/evaluations").json()
    assert len(listed) == 1


def test_the_comparison_lines_up_two_versions_on_one_benchmark_with_the_differences_interval(
    team: Team, lm_version: dict, tmp_path: Path
) -> None:
    from tests.inference.test_inference_server import build_tiny_model
    from tests.signed_in import HTML, sign_in
    from workers.registry_tasks import evaluate_version

    build_tiny_model(lm_version["folder"].parent / "tiny2", positions=256, seed=1)
    second = team.editor.post("/api/v1/models/import", json={"name": "tiny", "path": "tiny2"})
    assert second.status_code == 201, second.text
    content = "".join(json.dumps(r) + "\n" for r in MC_ROWS)
    for version_id in (lm_version["id"], second.json()["id"]):
        queued = _submit(team, version_id, "quiz.jsonl", content)
        assert evaluate_version.apply(args=[queued.json()["id"]]).get() == "succeeded"
    model_id = second.json()["registered_model_id"]
    table = team.viewer.get(f"/api/v1/models/{model_id}/comparison").json()
    [group] = table["datasets"]
    assert group["kind"] == "harness" and group["dataset_name"] == "benchmark quiz"
    assert group["baseline"] == 1 and set(group["versions"]) == {"1", "2"}
    first, later = group["versions"]["1"], group["versions"]["2"]
    diff = group["differences"]["2"]["acc"]
    assert diff["diff"] == pytest.approx(later["acc"] - first["acc"])
    se = (later["acc_stderr"] ** 2 + first["acc_stderr"] ** 2) ** 0.5
    assert diff["stderr"] == pytest.approx(se)
    assert diff["low"] == pytest.approx(diff["diff"] - 1.96 * se)
    assert diff["significant"] == (abs(diff["diff"]) > 1.96 * se)
    sign_in(team.viewer)
    page = team.viewer.client.get(f"/models?model={model_id}", headers=HTML).text
    assert 'data-testid="eval-compare"' in page and "(baseline)" in page and "Δ" in page
