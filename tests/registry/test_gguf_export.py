"""A version exported to GGUF runs in llama.cpp as it runs in transformers: the same greedy
tokens (f16 on every prompt, q8_0 on at least 4 of 5), the same tokenization, the chat template
and stop tokens in the file, and an Ollama Modelfile beside it. Both architectures we write
(GPT-2 scratch models, Llama-family models) are checked; an LSTM or a classifier is refused."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_page_routes import HTML, _sign_in
from tests.conftest import Team, chat_jsonl
from tests.registry.conftest import dummy_run_with_version, run_with_trained_model

PROMPTS = [f"what is {n} plus one?" for n in (1, 4, 7, 12, 20)]
NEW_TOKENS = 16


def transformers_greedy(model: Any, ids: list[int]) -> list[int]:
    """The first NEW_TOKENS greedy tokens, one forward pass each (no stop: raw decoding)."""
    import torch

    x = torch.tensor([ids])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            token = int(model(x).logits[0, -1].argmax())
            out.append(token)
            x = torch.cat([x, torch.tensor([[token]])], dim=1)
    return out


def llama_cpp_greedy(llm: Any, ids: list[int]) -> list[int]:
    llm.reset()
    out: list[int] = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == NEW_TOKENS:
            break
    return out


def identical_replies(folder: Path, gguf_file: Path) -> int:
    """On how many PROMPTS llama.cpp's greedy tokens equal transformers' (same prompt ids;
    llama.cpp's own tokenization of the chat-templated prompt must give those ids too)."""
    import llama_cpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=128, n_threads=2, verbose=False)
    same = 0
    try:
        for prompt in PROMPTS:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids
            same += transformers_greedy(model, ids) == llama_cpp_greedy(llm, ids)
    finally:
        llm.close()
    return same


def metadata(gguf_file: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_file)).fields
    wanted = (
        "general.architecture",
        "general.file_type",
        "tokenizer.ggml.model",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.chat_template",
    )
    return {key: fields[key].contents() for key in wanted if key in fields}


def test_a_fine_tuned_scratch_model_exports_to_gguf_that_llama_cpp_decodes_like_transformers(
    team: Team, installation: Path, trained: Path
) -> None:
    import llama_cpp
    from transformers import AutoTokenizer

    from workers.registry_tasks import export_version, gguf_path_for_version

    run_id, version = run_with_trained_model(team, installation, trained)
    final = installation / "artifacts" / "runs" / str(run_id) / "final"
    url = f"/api/v1/model-versions/{version['id']}/exports"
    assert team.viewer.post(url, json={"kind": "gguf"}).status_code == 403
    queued = team.editor.post(url, json={"kind": "gguf", "quantization": "q8_0"})
    assert queued.status_code == 202 and queued.json()["options"] == {"quantization": "q8_0"}
    export_id = queued.json()["id"]
    assert export_version.apply(args=[export_id]).get() == "succeeded"
    export = team.viewer.get(f"/api/v1/model-exports/{export_id}").json()
    assert export["status"] == "succeeded", export["error"]
    report = export["results"]
    assert report["architecture"] == "gpt2" and report["quantization"] == "q8_0"
    assert report["size_bytes"] < report["f16_size_bytes"]
    assert report["top1_agreement"] >= 0.9  # the export checks its own file in llama.cpp
    q8 = installation / "artifacts" / "exports" / str(export_id) / report["file"]

    # The engine's entry point finds that file, and makes (and records) the f16 one.
    assert gguf_path_for_version(version["id"], "q8_0") == q8
    f16 = gguf_path_for_version(version["id"], "f16")
    assert f16.is_file() and f16.name.endswith(".f16.gguf")
    exports = team.viewer.get(url).json()
    assert [e["options"]["quantization"] for e in exports] == ["f16", "q8_0"]

    assert identical_replies(final, f16) == 5
    assert identical_replies(final, q8) >= 4

    tokenizer = AutoTokenizer.from_pretrained(final)
    meta = metadata(q8)
    assert meta["general.architecture"] == "gpt2" and meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert meta["tokenizer.ggml.eot_token_id"] == tokenizer.convert_tokens_to_ids("<|end|>")
    # llama.cpp's own chat path (template and stop tokens from the file) ends the reply at <|end|>.
    llm = llama_cpp.Llama(model_path=str(q8), n_ctx=128, n_threads=2, verbose=False)
    try:
        reply = llm.create_chat_completion(
            [{"role": "user", "content": "what is 3 plus one?"}], temperature=0.0, max_tokens=30
        )["choices"][0]
    finally:
        llm.close()
    assert reply["finish_reason"] == "stop" and "plus one is" in reply["message"]["content"]
    assert "<|end|>" not in reply["message"]["content"]

    download = team.viewer.get(f"/api/v1/model-exports/{export_id}/download")
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    files = {Path(n).name: n for n in archive.namelist()}
    assert set(files) == {report["file"], "Modelfile"}
    modelfile = archive.read(files["Modelfile"]).decode()
    assert f"FROM ./{report['file']}\n" in modelfile
    assert 'TEMPLATE """{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n' in modelfile
    assert 'PARAMETER stop "<|end|>"' in modelfile
    assert 'PARAMETER stop "<|endoftext|>"' in modelfile

    _sign_in(team.viewer.client, team.viewer)
    page = team.viewer.client.get(f"/models/versions/{version['id']}", headers=HTML).text
    assert report["file"] in page and "llama.cpp picks transformers' next token at" in page


@pytest.fixture(scope="module")
def tiny_llama(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LlamaForCausalLM (grouped-query attention: 4 heads, 2 KV heads) with the scratch
    run's tokenizer, fine-tuned by the project's engine on the same chat rows."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workers.engine import NullCallbacks, TrainConfig, train

    base = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(trained / "final")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(base / "base")
    tokenizer.save_pretrained(base / "base")
    shutil.copyfile(
        trained / "final" / "generation_config.json", base / "base" / "generation_config.json"
    )
    data = base / "chat.jsonl"
    data.write_text(chat_jsonl(20))
    with torch.enable_grad():
        result = train(
            TrainConfig(
                output_dir=base / "run",
                train_file=data,
                train_format="chat",
                base_model="tiny-llama",
                base_model_path=base / "base",
                learning_rate=3e-3,
                max_steps=80,
                block_size=64,
                batch_size=8,
            ),
            NullCallbacks(),
        )
    return result.final_dir


def test_a_llama_architecture_model_exports_with_its_rope_layout_and_decodes_alike(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from workers.engine.gguf import export_gguf

    reports = {
        q: export_gguf(tiny_llama, tmp_path / q, quantization=q, name="tiny", progress=print)
        for q in ("f16", "q8_0", "q4_k_m")
    }
    files = {q: tmp_path / q / r["file"] for q, r in reports.items()}
    assert metadata(files["f16"])["general.architecture"] == "llama"
    # Without the q/k row permutation for llama.cpp's RoPE the replies diverge at once.
    assert identical_replies(tiny_llama, files["f16"]) == 5
    assert identical_replies(tiny_llama, files["q8_0"]) >= 4
    sizes = [files[q].stat().st_size for q in ("f16", "q8_0", "q4_k_m")]
    assert sizes == sorted(sizes, reverse=True)
    assert metadata(files["q4_k_m"])["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert (tmp_path / "q4_k_m" / "Modelfile").read_text().startswith("# Ollama")

    # A version imported as a GGUF file (transformers reads it back; its config names no
    # architecture) exports again, to the very same f16 tensors and tokenizer.
    from gguf import GGUFReader

    imported = tmp_path / "imported"
    imported.mkdir()
    shutil.copyfile(files["f16"], imported / "tiny.gguf")
    again = export_gguf(
        imported, tmp_path / "again", quantization="f16", name="tiny", progress=print
    )
    first, second = (
        GGUFReader(str(path)) for path in (files["f16"], tmp_path / "again" / again["file"])
    )
    assert [t.name for t in first.tensors] == [t.name for t in second.tensors]
    for a, b in zip(first.tensors, second.tensors, strict=True):
        assert (a.data == b.data).all(), a.name
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.eot_token_id", "tokenizer.chat_template"):
        assert first.fields[key].contents() == second.fields[key].contents()


def _with_config(installation: Path, team: Team, config: dict) -> dict:
    run_id, version = dummy_run_with_version(team, installation)
    folder = installation / "artifacts" / "runs" / str(run_id) / "final"
    (folder / "config.json").write_text(json.dumps(config))
    return version


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"architectures": ["LstmForCausalLM"], "model_type": "llmide-lstm"}, "LstmForCausalLM"),
        (
            {"architectures": ["GPT2ForSequenceClassification"], "model_type": "gpt2"},
            "GPT2ForSequenceClassification",
        ),
        ({"architectures": ["BertModel"], "model_type": "bert"}, "BertModel"),
    ],
)
def test_gguf_export_of_an_architecture_llama_cpp_cannot_run_is_a_400_naming_it(
    team: Team, installation: Path, config: dict, named: str
) -> None:
    version = _with_config(installation, team, config)
    url = f"/api/v1/model-versions/{version['id']}/exports"
    refused = team.editor.post(url, json={"kind": "gguf", "quantization": "f16"})
    assert refused.status_code == 400
    assert named in refused.json()["detail"] and "llama.cpp" in refused.json()["detail"]
    assert team.viewer.get(url).json() == []  # nothing queued, nothing half-made


def test_unknown_gguf_quantization_and_misplaced_options_are_400s_naming_them(
    team: Team, installation: Path
) -> None:
    version = _with_config(installation, team, {"architectures": ["GPT2LMHeadModel"]})
    url = f"/api/v1/model-versions/{version['id']}/exports"
    unknown = team.editor.post(url, json={"kind": "gguf", "quantization": "q3_k_xl"})
    assert unknown.status_code == 400 and "q3_k_xl" in unknown.json()["detail"]
    onnx_flag = team.editor.post(url, json={"kind": "gguf", "quantize": True})
    assert onnx_flag.status_code == 400 and "quantize" in onnx_flag.json()["detail"]
    on_onnx = team.editor.post(url, json={"kind": "onnx", "quantization": "q8_0"})
    assert on_onnx.status_code == 400 and "quantization" in on_onnx.json()["detail"]
    assert team.viewer.get(url).json() == []


def test_the_version_page_offers_gguf_only_where_llama_cpp_runs_the_model(
    team: Team, installation: Path
) -> None:
    gpt2 = _with_config(installation, team, {"architectures": ["GPT2LMHeadModel"]})
    lstm = _with_config(installation, team, {"architectures": ["LstmForCausalLM"]})
    client = team.editor.client
    token = _sign_in(client, team.editor)
    page = client.get(f"/models/versions/{gpt2['id']}", headers=HTML).text
    assert 'data-testid="export-gguf"' in page and '<option value="q4_k_m">' in page
    started = client.post(
        f"/models/versions/{gpt2['id']}/exports",
        headers=HTML,
        data={"kind": "gguf", "quantization": "q4_k_m", "csrf_token": token},
        follow_redirects=False,
    )
    assert started.status_code == 303
    [export] = team.viewer.get(f"/api/v1/model-versions/{gpt2['id']}/exports").json()
    assert export["kind"] == "gguf" and export["options"] == {"quantization": "q4_k_m"}
    page = client.get(f"/models/versions/{lstm['id']}", headers=HTML).text
    assert 'data-testid="export-onnx"' in page and 'data-testid="export-gguf"' not in page


def test_the_web_side_and_the_writer_agree_on_the_architectures() -> None:
    from app.services.registry.exports import GGUF_QUANTIZATIONS
    from app.services.registry.gguf import GGUF_ARCHITECTURES
    from workers.engine.gguf import QUANTIZATIONS, SUPPORTED_ARCHITECTURES

    assert GGUF_ARCHITECTURES == SUPPORTED_ARCHITECTURES
    assert GGUF_QUANTIZATIONS == QUANTIZATIONS


CHATML_WITH_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_the_modelfile_template_renders_conversations_as_the_jinja_template_does(
    trained: Path,
) -> None:
    from transformers import AutoTokenizer

    from workers.engine.modelfile import chat_format, modelfile

    tokenizer = AutoTokenizer.from_pretrained(trained / "final")
    tokenizer.chat_template = CHATML_WITH_DEFAULT_SYSTEM
    found = chat_format(tokenizer)
    assert found is not None and found.default_system == "You are a helpful AI assistant"
    for conversation in (
        [{"role": "user", "content": "hi"}],
        [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "bonjour"},
            {"role": "user", "content": "and goodbye?"},
        ],
    ):
        expected = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        assert found.render(conversation) == expected
    text = modelfile("m.q8_0.gguf", tokenizer, ["<|im_end|>"])
    assert (
        'TEMPLATE """{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
        '{{ end }}<|im_start|>assistant\n"""'
    ) in text
    assert 'SYSTEM """You are a helpful AI assistant"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    # A template that does not decompose into turns gets no TEMPLATE rather than a wrong one.
    tokenizer.chat_template = (
        "{{ messages | length }}{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    assert chat_format(tokenizer) is None
    assert "TEMPLATE" not in modelfile("m.gguf", tokenizer, [])


def test_a_lora_adapter_version_exports_to_gguf_merged_into_its_base(
    team: Team, installation: Path, trained: Path, tmp_path: Path
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from workers.registry_tasks import export_version

    run_id, _ = run_with_trained_model(team, installation, trained)
    base_dir = installation / "artifacts" / "runs" / str(run_id) / "final"
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora).save_pretrained(
        tmp_path / "adapter"
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in (tmp_path / "adapter").iterdir():
            zipped.writestr(path.name, path.read_bytes())
    created = team.editor.post(
        "/api/v1/models/import/upload",
        files={"file": ("adapter.zip", io.BytesIO(archive.getvalue()))},
        data={"name": "adder-lora"},
    )
    assert created.status_code == 201, created.text
    queued = team.editor.post(
        f"/api/v1/model-versions/{created.json()['id']}/exports",
        json={"kind": "gguf", "quantization": "f16"},
    )
    assert queued.status_code == 202, queued.text
    assert export_version.apply(args=[queued.json()["id"]]).get() == "succeeded"
    report = team.viewer.get(f"/api/v1/model-exports/{queued.json()['id']}").json()["results"]
    assert report["merged_adapter"] is True and report["architecture"] == "gpt2"
    assert report["top1_agreement"] >= 0.95 and report["max_abs_logits_diff"] < 0.05
    # Independently: llama.cpp's logits are the adapted model's, not the base's.
    import llama_cpp
    import numpy as np
    from peft import PeftModel

    gguf_file = installation / "artifacts" / "exports" / str(queued.json()["id"]) / report["file"]
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=64, logits_all=True, verbose=False)
    ids = [5, 17, 42, 8, 99, 3, 61]
    try:
        llm.eval(ids)
        served = np.asarray(llm.scores[: len(ids)])
    finally:
        llm.close()
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        plain = base(torch.tensor([ids])).logits[0].numpy()
        adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        expected = adapted(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(served - expected).max() < 0.05 < np.abs(served - plain).max()


def test_ensure_gguf_writes_a_folder_once_per_content_and_quantization(
    trained: Path, tmp_path: Path
) -> None:
    from workers.engine.gguf import ensure_gguf

    folder = tmp_path / "model"
    shutil.copytree(trained / "final", folder)
    cache = tmp_path / "cache"
    first = ensure_gguf(folder, cache, quantization="q8_0")
    made = first.stat().st_mtime_ns
    assert first.name.endswith(".q8_0.gguf") and (first.parent / "Modelfile").is_file()
    assert ensure_gguf(folder, cache, quantization="q8_0") == first
    assert first.stat().st_mtime_ns == made  # reused, not rewritten
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")
    assert ensure_gguf(folder, cache, quantization="q8_0").parent != first.parent
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no staging left over


def test_an_adapter_is_judged_by_its_base_only_when_that_base_is_in_the_artifact_store(
    installation: Path, tmp_path: Path
) -> None:
    from app.core.errors import ValidationFailed
    from app.services.registry.gguf import check_exportable

    lstm = {"architectures": ["LstmForCausalLM"]}
    inside = installation / "artifacts" / "runs" / "9" / "final"
    outside = tmp_path / "elsewhere"
    for base in (inside, outside):
        base.mkdir(parents=True)
        (base / "config.json").write_text(json.dumps(lstm))
    adapter = installation / "artifacts" / "imports" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "runs/9/final"})
    )
    with pytest.raises(ValidationFailed, match="LstmForCausalLM"):
        check_exportable(adapter)
    # A path from an uploaded file is not followed out of the store (the worker checks it).
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(outside)})
    )
    assert check_exportable(adapter) == "adapter"
