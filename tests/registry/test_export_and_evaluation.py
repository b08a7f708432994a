"""A model fine-tuned here travels out of the registry intact: the streamed zip loads with plain
transformers elsewhere (same logits, same chat template, stops at the same EOS), ONNX gives the
same logits, int8 is smaller, and an evaluation measures it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from app.services.registry.files import zip_stream
from tests.conftest import Team, chat_jsonl
from tests.registry.conftest import run_with_trained_model

PROMPT = [{"role": "user", "content": "what is 3 plus one?"}]
# Run in a fresh interpreter, with nothing of this project imported: what someone who only
# downloaded the zip would do.
LOAD_EXPORT = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
ids = tok.apply_chat_template(
    prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
)
with torch.no_grad():
    logits = model(**ids).logits[0, -1].tolist()
    out = model.generate(**ids, max_new_tokens=40, do_sample=False)
print(json.dumps({"logits": logits, "new_tokens": out[0, ids["input_ids"].shape[1]:].tolist(),
                  "eos": model.generation_config.eos_token_id, "template": tok.chat_template}))
"""


def deployed_answer(folder: Path) -> dict:
    """What the inference server's loader makes of the registered version."""
    import torch

    from workers.inference.registry import ModelSource, _load_weights

    grad = torch.is_grad_enabled()
    try:
        model, tokenizer, *_ = _load_weights(ModelSource(folder))
    finally:
        torch.set_grad_enabled(grad)  # the server's loader turns autograd off process-wide
    ids = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
        out = model.generate(**ids, max_new_tokens=40, do_sample=False)
    return {
        "logits": logits,
        "new_tokens": out[0, ids["input_ids"].shape[1] :].tolist(),
        "eos": model.generation_config.eos_token_id,
        "template": tokenizer.chat_template,
    }


def test_the_streamed_zip_loads_elsewhere_with_the_same_logits_template_and_eos(
    team: Team, installation: Path, trained: Path, tmp_path: Path
) -> None:
    import torch

    run_id, version = run_with_trained_model(team, installation, trained)
    with team.viewer.client.stream(
        "GET", f"/api/v1/model-versions/{version['id']}/download", headers=team.viewer.headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/zip"
        declared = int(response.headers["content-length"])
        body = b"".join(response.iter_bytes())
    assert len(body) == declared
    # Produced piece by piece: no chunk holds more than a read buffer of the 7 MB archive.
    chunks, size = zip_stream(installation / "artifacts" / "runs" / str(run_id) / "final", "m")
    sizes = [len(chunk) for chunk in chunks]
    assert sum(sizes) == size and max(sizes) <= 64 * 1024 < size
    archive = zipfile.ZipFile(io.BytesIO(body))
    names = {Path(n).name for n in archive.namelist()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert (
        "chat_template.jinja" in names
        or "chat_template"
        in archive.read(
            next(n for n in archive.namelist() if n.endswith("tokenizer_config.json"))
        ).decode()
    )
    archive.extractall(tmp_path / "unzipped")
    folder = next((tmp_path / "unzipped").iterdir())

    done = subprocess.run(
        [sys.executable, "-c", LOAD_EXPORT, str(folder), json.dumps(PROMPT)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    exported = json.loads(done.stdout.strip().splitlines()[-1])
    served = deployed_answer(installation / "artifacts" / "runs" / str(run_id) / "final")

    assert torch.allclose(torch.tensor(exported["logits"]), served["logits"], atol=1e-5)
    assert exported["template"] == served["template"] and "<|end|>" in exported["template"]
    assert exported["eos"] == served["eos"] and len(exported["eos"]) == 2
    # It stops where the trained model stops: on <|end|>, well before the token limit.
    assert exported["new_tokens"] == served["new_tokens"]
    assert exported["new_tokens"][-1] in exported["eos"] and len(exported["new_tokens"]) < 40


def test_onnx_export_matches_torch_and_int8_is_smaller(
    team: Team, installation: Path, trained: Path
) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    from workers.registry_tasks import export_version

    run_id, version = run_with_trained_model(team, installation, trained)
    url = f"/api/v1/model-versions/{version['id']}/exports"
    assert team.viewer.post(url, json={"kind": "onnx"}).status_code == 403
    assert team.editor.post(url, json={"kind": "tflite"}).status_code == 400
    queued = team.editor.post(url, json={"kind": "onnx", "quantize": True})
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    export_id = queued.json()["id"]
    assert export_version.apply(args=[export_id]).get() == "succeeded"

    export = team.viewer.get(f"/api/v1/model-exports/{export_id}").json()
    assert export["status"] == "succeeded" and export["progress"] == 1.0
    report = export["results"]
    assert report["onnx_fp32"]["max_abs_logits_diff"] < 1e-3
    assert report["onnx_int8"]["size_bytes"] < report["onnx_fp32"]["size_bytes"]
    assert report["onnx_int8"]["perplexity"] > 0

    # Checked here too, independently of the task's own report.
    folder = installation / "artifacts" / "exports" / str(export_id)
    model = AutoModelForCausalLM.from_pretrained(
        installation / "artifacts" / "runs" / str(run_id) / "final"
    )
    ids = torch.tensor([[5, 17, 42, 8, 99, 3, 61]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits.numpy()
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())})
    assert np.abs(got[0] - expected).max() < 1e-3
    download = team.viewer.get(f"/api/v1/model-exports/{export_id}/download")
    names = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json"} <= {Path(n).name for n in names}


def test_evaluations_measure_perplexity_and_compare_versions_on_the_same_dataset(
    team: Team, installation: Path, trained: Path
) -> None:
    from workers.registry_tasks import evaluate_version

    run_id, final = run_with_trained_model(team, installation, trained)
    first = team.viewer.get(f"/api/v1/runs/{run_id}/checkpoints").json()[0]
    early = team.editor.post("/api/v1/models/versions", json={"checkpoint_id": first["id"]}).json()
    dataset_id = team.editor.upload("heldout.jsonl", chat_jsonl(6)).json()["id"]
    body = {"dataset_id": dataset_id, "prompts": ["what is 7 plus one?"], "max_new_tokens": 12}
    assert (
        team.viewer.post(f"/api/v1/model-versions/{final['id']}/evaluations", json=body).status_code
        == 403
    )
    ids = []
    for version in (final, early):
        queued = team.editor.post(f"/api/v1/model-versions/{version['id']}/evaluations", json=body)
        assert queued.status_code == 202, queued.text
        ids.append(queued.json()["id"])
        assert evaluate_version.apply(args=[ids[-1]]).get() == "succeeded"
    done_final, done_early = (team.viewer.get(f"/api/v1/evaluations/{i}").json() for i in ids)
    assert done_final["status"] == "succeeded" and done_final["error"] is None
    assert 1 < done_final["metrics"]["perplexity"] < done_early["metrics"]["perplexity"]
    assert 0 <= done_final["metrics"]["rouge_l"] <= 1 and "bleu" in done_final["metrics"]
    assert done_final["samples"][0]["prompt"] == "what is 7 plus one?"
    assert "plus one is" in done_final["samples"][0]["output"]

    model_id = final["registered_model_id"]
    table = team.viewer.get(f"/api/v1/models/{model_id}/comparison").json()
    [group] = table["datasets"]
    assert group["dataset_id"] == dataset_id
    assert set(group["versions"]) == {str(final["version"]), str(early["version"])}


@pytest.mark.parametrize("kind", ["merged"])
def test_merging_needs_a_lora_adapter(
    team: Team, installation: Path, trained: Path, kind: str
) -> None:
    _, version = run_with_trained_model(team, installation, trained)
    refused = team.editor.post(
        f"/api/v1/model-versions/{version['id']}/exports", json={"kind": kind}
    )
    assert refused.status_code == 400 and "LoRA adapter" in refused.json()["detail"]


def test_a_lora_adapter_exports_as_adapter_or_merged_into_its_base(
    team: Team, installation: Path, trained: Path, tmp_path: Path
) -> None:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from workers.registry_tasks import export_version

    run_id, _ = run_with_trained_model(team, installation, trained)
    base_dir = installation / "artifacts" / "runs" / str(run_id) / "final"
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    files = {p.name: p.read_bytes() for p in adapter_dir.iterdir()}
    created = team.editor.post(
        "/api/v1/models/import/upload",
        files={"file": ("adapter.zip", io.BytesIO(_zip(files)))},
        data={"name": "adder-lora"},
    )
    assert created.status_code == 201, created.text
    version = created.json()
    assert version["lineage"]["format"] == "peft-adapter"
    as_adapter = team.viewer.get(f"/api/v1/model-versions/{version['id']}/download")
    names = {Path(n).name for n in zipfile.ZipFile(io.BytesIO(as_adapter.content)).namelist()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names

    queued = team.editor.post(
        f"/api/v1/model-versions/{version['id']}/exports", json={"kind": "merged"}
    )
    assert queued.status_code == 202, queued.text
    assert export_version.apply(args=[queued.json()["id"]]).get() == "succeeded"
    merged_dir = installation / "artifacts" / "exports" / str(queued.json()["id"])
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, use_safetensors=True).eval()
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir
    ).eval()
    ids = torch.tensor([[5, 17, 42, 8, 99]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-4)
    assert (merged_dir / "tokenizer.json").is_file()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_classifier_version_is_evaluated_with_accuracy_f1_and_its_labels_for_the_prompts(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.settings import get_settings
    from tests.serving.conftest import build_tiny_classifier
    from workers.registry_tasks import evaluate_version

    imports = tmp_path / "imports"
    build_tiny_classifier(imports / "sentiment")
    monkeypatch.setenv("LLMIDE_IMPORT_DIR", str(imports))
    get_settings.cache_clear()
    created = team.editor.post(
        "/api/v1/models/import", json={"name": "sentiment", "path": "sentiment"}
    )
    assert created.status_code == 201, created.text
    labels = ("positive", "negative")
    rows = [{"text": f"review number {i}", "label": labels[i % 2]} for i in range(8)]
    rows.append({"text": "a label the model never saw", "label": "neutral"})
    dataset = team.editor.upload("sentiment.jsonl", "\n".join(json.dumps(r) for r in rows))
    assert dataset.status_code == 201, dataset.text
    body = {"dataset_id": dataset.json()["id"], "prompts": ["loved it"]}
    version_id = created.json()["id"]
    queued = team.editor.post(f"/api/v1/model-versions/{version_id}/evaluations", json=body)
    assert queued.status_code == 202, queued.text
    assert evaluate_version.apply(args=[queued.json()["id"]]).get() == "succeeded"

    done = team.viewer.get(f"/api/v1/evaluations/{queued.json()['id']}").json()
    metrics = done["metrics"]
    assert metrics["eval_rows"] == 9 and "perplexity" not in metrics
    # The untrained classifier predicts one of its two labels: the "neutral" row is always
    # wrong, so accuracy is at most 8 of 9, and the three classes average into macro F1.
    assert 0 <= metrics["accuracy"] <= 8 / 9 and 0 <= metrics["f1_macro"] <= 1
    assert done["samples"][0]["prompt"] == "loved it"
    assert done["samples"][0]["output"].split(" ")[0] in {"positive", "negative"}


def _imported_classifier(team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    from app.core.settings import get_settings
    from tests.serving.conftest import build_tiny_classifier

    imports = tmp_path / "imports"
    build_tiny_classifier(imports / "headlines")
    monkeypatch.setenv("LLMIDE_IMPORT_DIR", str(imports))
    get_settings.cache_clear()
    created = team.editor.post(
        "/api/v1/models/import", json={"name": "headlines", "path": "headlines"}
    )
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def test_a_classifier_is_evaluated_on_its_datas_own_rows_and_shown_without_perplexity(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.signed_in import HTML, sign_in
    from workers.registry_tasks import evaluate_version

    version_id = _imported_classifier(team, tmp_path, monkeypatch)
    headlines = ["央行宣布降息", "股市大涨", "国足惜败", "油价下调", "暴雨预警升级", "高考今日开考"]
    rows = [{"text": t, "label": ("negative", "positive")[i % 2]} for i, t in enumerate(headlines)]
    dataset = team.editor.upload("headlines.jsonl", "\n".join(json.dumps(r) for r in rows))
    assert dataset.status_code == 201, dataset.text
    url = f"/api/v1/model-versions/{version_id}/evaluations"
    queued = team.editor.post(url, json={"dataset_id": dataset.json()["id"]})
    assert queued.status_code == 202, queued.text
    assert queued.json()["options"]["prompts"] == []  # no English chat prompts for it
    assert evaluate_version.apply(args=[queued.json()["id"]]).get() == "succeeded"

    done = team.viewer.get(f"/api/v1/evaluations/{queued.json()['id']}").json()
    assert "perplexity" not in done["metrics"]
    assert set(done["metrics"]["per_class"]) == {"negative", "positive"}
    # The samples are the data's own rows, with the label each was given.
    assert [s["prompt"] for s in done["samples"]] == headlines[:5]
    assert [s["expected"] for s in done["samples"]] == [r["label"] for r in rows[:5]]
    assert all(s["output"].split(" ")[0] in {"negative", "positive"} for s in done["samples"])

    # A chat dataset cannot evaluate a classifier: refused at once, naming why.
    chat = team.editor.upload("chat.jsonl", chat_jsonl(5))
    refused = team.editor.post(url, json={"dataset_id": chat.json()["id"]})
    assert refused.status_code == 400 and "is a classifier" in refused.json()["detail"]

    sign_in(team.viewer)
    page = team.viewer.client.get(f"/models/versions/{version_id}", headers=HTML).text
    evaluations = page[page.index('data-testid="evaluations"') :]
    assert "Accuracy" in evaluations and "Macro F1" in evaluations and "2 classes" in evaluations
    assert "Perplexity" not in page
    assert "/playground/classify?model=" in page
    cards = team.viewer.client.get("/models", headers=HTML).text
    assert 'data-testid="card-accuracy"' in cards and "Perplexity" not in cards


def test_a_classifier_exports_to_onnx_with_its_answers_compared_not_a_perplexity(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.registry_tasks import export_version

    version_id = _imported_classifier(team, tmp_path, monkeypatch)
    queued = team.editor.post(
        f"/api/v1/model-versions/{version_id}/exports", json={"kind": "onnx", "quantize": True}
    )
    assert queued.status_code == 202, queued.text
    assert export_version.apply(args=[queued.json()["id"]]).get() == "succeeded"
    report = team.viewer.get(f"/api/v1/model-exports/{queued.json()['id']}").json()["results"]
    for variant in ("torch_fp32", "onnx_fp32", "onnx_int8"):
        assert "perplexity" not in report[variant]
    assert report["onnx_fp32"]["max_abs_logits_diff"] < 1e-3
    assert report["onnx_fp32"]["agreement"] == 1.0
    assert 0 <= report["onnx_int8"]["agreement"] <= 1
