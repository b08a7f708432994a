"""Choosing the engine (transformers lanes or vLLM) and the vLLM backend's translation layer.

vLLM is not installed here and there is no GPU: the selection rules are checked on facts
written out, and on this machine's real facts (vLLM absent, no CUDA); the vLLM backend's
request plumbing runs against a stand-in engine that speaks vLLM's streaming-delta protocol.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings, get_settings
from tests.inference.test_inference_server import TINY, build_tiny_model, wait_ready
from tests.serving.conftest import build_tiny_classifier
from workers.inference import generation
from workers.inference.backends import (
    GGUF_EXPORT_ARCHITECTURES,
    BackendUnavailable,
    Machine,
    ModelFacts,
    choose_backend,
    choose_engine,
    model_facts,
    probe_machine,
    vllm_refusal,
)
from workers.inference.generation import GenerationResult, PreparedRequest, SamplingParams
from workers.inference.server import TOKEN_HEADER, create_app
from workers.inference.vllm_backend import (
    DeltaCollector,
    VLLMEngine,
    config_context_length,
    engine_kwargs,
    eos_token_ids,
    finish_reason_of,
    structured_kwargs,
    vllm_sampling_kwargs,
)

GPU_WITH_VLLM = Machine(
    vllm_version="0.11.0", cuda=True, vllm_architectures=frozenset({"LlamaForCausalLM"})
)
LLAMA = ModelFacts(architectures=("LlamaForCausalLM",), gguf=False, classifier=False)

# --------------------------------------------------------------------------- selection rules


def test_auto_picks_vllm_only_with_vllm_a_gpu_and_a_supported_causal_lm() -> None:
    assert choose_backend("auto", GPU_WITH_VLLM, LLAMA) == "vllm"
    no_gpu = Machine(vllm_version="0.11.0", cuda=False)
    absent = Machine(vllm_version=None, cuda=True)
    gguf = ModelFacts(architectures=("LlamaForCausalLM",), gguf=True, classifier=False)
    lstm = ModelFacts(architectures=("CharLSTM",), gguf=False, classifier=False)
    for machine, model in ((no_gpu, LLAMA), (absent, LLAMA), (GPU_WITH_VLLM, gguf)):
        assert choose_backend("auto", machine, model) == "transformers"
    assert choose_backend("auto", GPU_WITH_VLLM, lstm) == "transformers"
    ours = ModelFacts(architectures=("LstmForCausalLM",), gguf=False, classifier=False)
    anything_goes = Machine(vllm_version="0.11.0", cuda=True, vllm_architectures=None)
    assert choose_backend("auto", anything_goes, ours) == "transformers"


CPU_WITH_LLAMACPP = Machine(vllm_version=None, cuda=False, llamacpp_version="0.3.36")
GGUF = ModelFacts(architectures=(), gguf=True, classifier=False)


def test_auto_serves_a_gguf_causal_lm_with_llamacpp_and_says_why() -> None:
    engine, reason = choose_engine("auto", CPU_WITH_LLAMACPP, GGUF)
    assert engine == "llamacpp"
    assert "GGUF" in reason and "vLLM is not installed" in reason
    # vLLM refuses GGUF files, so a GPU machine with both still serves GGUF with llama.cpp.
    both = Machine(
        vllm_version="0.11.0",
        cuda=True,
        vllm_architectures=frozenset({"LlamaForCausalLM"}),
        llamacpp_version="0.3.36",
    )
    assert choose_engine("auto", both, GGUF)[0] == "llamacpp"
    assert choose_engine("auto", both, LLAMA)[0] == "vllm"


MISTRAL = ModelFacts(architectures=("MistralForCausalLM",), gguf=False, classifier=False)


def test_a_safetensors_gpt2_or_llama_on_a_cpu_is_exported_to_gguf_for_llamacpp() -> None:
    for architecture in ("LlamaForCausalLM", "GPT2LMHeadModel"):
        facts = ModelFacts(architectures=(architecture,), gguf=False, classifier=False)
        engine, reason = choose_engine("auto", CPU_WITH_LLAMACPP, facts)
        assert engine == "llamacpp"
        assert "exported to GGUF (q8_0)" in reason and "vLLM is not installed" in reason
    assert choose_engine("llamacpp", CPU_WITH_LLAMACPP, LLAMA)[0] == "llamacpp"
    # On a GPU with vLLM, vLLM serves the safetensors folder itself.
    both = Machine(
        vllm_version="0.11.0",
        cuda=True,
        vllm_architectures=frozenset({"LlamaForCausalLM"}),
        llamacpp_version="0.3.36",
    )
    assert choose_engine("auto", both, LLAMA)[0] == "vllm"


def test_the_export_list_is_the_gguf_writers() -> None:
    from workers.engine.gguf import SUPPORTED_ARCHITECTURES

    assert set(SUPPORTED_ARCHITECTURES) == GGUF_EXPORT_ARCHITECTURES


def test_safetensors_versions_classifiers_and_the_lstm_stay_on_transformers_with_a_reason() -> None:
    engine, reason = choose_engine("auto", CPU_WITH_LLAMACPP, MISTRAL)
    assert engine == "transformers"
    assert "safetensors weights only" in reason and "GGUF" in reason
    assert "not MistralForCausalLM" in reason
    export_off = Machine(
        vllm_version=None, cuda=False, llamacpp_version="0.3.36", llamacpp_export=False
    )
    engine, reason = choose_engine("auto", export_off, LLAMA)
    assert engine == "transformers" and "LLMIDE_LLAMACPP_EXPORT=false" in reason
    classifier = ModelFacts(
        architectures=("BertForSequenceClassification",), gguf=False, classifier=True
    )
    assert choose_engine("llamacpp", CPU_WITH_LLAMACPP, classifier)[0] == "transformers"
    lstm = ModelFacts(architectures=("LstmForCausalLM",), gguf=False, classifier=False)
    assert "own architecture" in choose_engine("auto", CPU_WITH_LLAMACPP, lstm)[1]


def test_a_missing_or_broken_llamacpp_falls_back_to_transformers_under_auto_only() -> None:
    missing = Machine(vllm_version=None, cuda=False)
    engine, reason = choose_engine("auto", missing, GGUF)
    assert engine == "transformers" and "llama-cpp-python is not installed" in reason
    broken = Machine(vllm_version=None, cuda=False, llamacpp_error="OSError: libggml.so")
    engine, reason = choose_engine("auto", broken, GGUF)
    assert engine == "transformers" and "does not import (OSError: libggml.so)" in reason
    with pytest.raises(BackendUnavailable, match="LLMIDE_INFERENCE_BACKEND=llamacpp"):
        choose_engine("llamacpp", missing, GGUF)
    with pytest.raises(BackendUnavailable, match="safetensors weights only"):
        choose_engine("llamacpp", CPU_WITH_LLAMACPP, MISTRAL)


def test_transformers_is_never_vllm_and_classifiers_always_use_transformers() -> None:
    classifier = ModelFacts(
        architectures=("BertForSequenceClassification",), gguf=False, classifier=True
    )
    assert choose_backend("transformers", GPU_WITH_VLLM, LLAMA) == "transformers"
    assert choose_backend("vllm", GPU_WITH_VLLM, classifier) == "transformers"


def test_asking_for_vllm_where_it_cannot_serve_fails_with_the_reason() -> None:
    broken = Machine(vllm_version=None, cuda=True, vllm_error="ImportError: libcuda")
    cases = [
        (Machine(vllm_version=None, cuda=True), LLAMA, "not installed"),
        (broken, LLAMA, "libcuda"),
        (Machine(vllm_version="0.11.0", cuda=False), LLAMA, "no CUDA GPU"),
        (GPU_WITH_VLLM, ModelFacts(("LlamaForCausalLM",), gguf=True, classifier=False), "GGUF"),
        (GPU_WITH_VLLM, ModelFacts(("CharLSTM",), gguf=False, classifier=False), "CharLSTM"),
        (GPU_WITH_VLLM, ModelFacts((), gguf=False, classifier=False), "no architecture"),
    ]
    for machine, model, reason in cases:
        with pytest.raises(BackendUnavailable) as refused:
            choose_backend("vllm", machine, model)
        assert reason in str(refused.value)
        assert "LLMIDE_INFERENCE_BACKEND=auto" in str(refused.value)


def test_without_vllms_registry_the_architecture_name_decides_what_is_a_causal_lm() -> None:
    unknown_registry = Machine(vllm_version="0.11.0", cuda=True, vllm_architectures=None)
    gpt2 = ModelFacts(("GPT2LMHeadModel",), gguf=False, classifier=False)
    onnxish = ModelFacts(("BertModel",), gguf=False, classifier=False)
    assert vllm_refusal(unknown_registry, gpt2) is None
    assert "not a causal language model" in (vllm_refusal(unknown_registry, onnxish) or "")


def test_this_machine_has_no_vllm_and_no_cuda_so_auto_serves_with_llamacpp_or_transformers(
    tmp_path: Path,
) -> None:
    machine = probe_machine()
    assert machine.vllm_version is None  # vllm is not installed here
    assert importlib.util.find_spec("vllm") is None
    assert machine.cuda is False
    build_tiny_model(tmp_path)
    facts = model_facts(tmp_path, None)
    assert facts.architectures == ("GPT2LMHeadModel",) and not facts.classifier
    assert facts.gguf_exportable
    # llama-cpp-python is installed here: the GPT-2 is exported to GGUF for it, unless the
    # export is turned off.
    assert choose_backend("auto", machine, facts) == "llamacpp"
    no_export = dataclasses.replace(machine, llamacpp_export=False)
    assert choose_backend("auto", no_export, facts) == "transformers"
    with pytest.raises(BackendUnavailable, match="not installed"):
        choose_backend("vllm", machine, facts)


def test_model_facts_reads_the_folder_config_and_the_gguf_flag(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["BertForSequenceClassification"], "n_positions": 77})
    )
    facts = model_facts(tmp_path, None)
    assert facts.classifier and not facts.gguf
    assert model_facts(tmp_path, "model.gguf").gguf
    assert config_context_length(tmp_path) == 77
    (tmp_path / "config.json").write_text("not json")
    assert model_facts(tmp_path, None).architectures == ()
    assert config_context_length(tmp_path) is None


# --------------------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def vllm_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """LLMIDE_INFERENCE_BACKEND=vllm on this machine (no vLLM, no GPU), tiny models built."""
    data_dir = tmp_path_factory.mktemp("inference-vllm")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMIDE_DATA_DIR", str(data_dir))
        patch.setenv("LLMIDE_INFERENCE_BACKEND", "vllm")
        get_settings.cache_clear()
        current = get_settings()
        current.ensure_dirs()
        build_tiny_model(current.artifact_root / TINY)
        build_tiny_classifier(current.artifact_root / "models" / "classifier")
        yield current
    get_settings.cache_clear()


def test_the_backend_setting_is_read_from_the_environment(vllm_settings: Settings) -> None:
    assert vllm_settings.inference_backend == "vllm"
    with pytest.raises(ValueError):
        Settings(inference_backend="tensorrt")  # type: ignore[arg-type]


def test_an_explicit_vllm_backend_without_vllm_fails_the_load_with_the_reason_not_a_500(
    vllm_settings: Settings,
) -> None:
    app = create_app(settings=vllm_settings, load_wait_s=30)
    with TestClient(app, headers={TOKEN_HEADER: vllm_settings.internal_token}) as client:
        assert client.put("/models/tiny", json={"path": TINY}).status_code in (200, 202)
        status = wait_ready(client, "tiny")
        assert status["status"] == "failed"
        assert "vLLM is not installed" in status["error"]
        answer = client.post("/generate", json={"name": "tiny", "prompt": "the cat"})
        assert answer.status_code == 424  # a load that failed: no retry-later 503
        assert "vLLM is not installed" in answer.json()["detail"]

        # A classifier is answered by /predict, which only the transformers engine has.
        loaded = client.put("/models/clf", json={"path": "models/classifier"})
        assert loaded.status_code in (200, 202)
        status = wait_ready(client, "clf")
        assert (status["status"], status["backend"]) == ("ready", "transformers")
        assert client.post("/predict", json={"name": "clf", "inputs": "hi"}).status_code == 200


# --------------------------------------------------------------------------- translation


def test_sampling_params_translate_to_vllms_with_nothing_left_to_its_defaults() -> None:
    greedy = vllm_sampling_kwargs(SamplingParams(max_tokens=9, temperature=0, top_p=0.5))
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0
    assert greedy["max_tokens"] == 9 and greedy["n"] == 1
    assert greedy["stop"] is None and "seed" not in greedy and greedy["stop_token_ids"] is None
    assert greedy["repetition_penalty"] == 1.0
    assert greedy["include_stop_str_in_output"] is False and greedy["skip_special_tokens"]
    sampled = vllm_sampling_kwargs(
        SamplingParams(max_tokens=4, temperature=0.7, top_p=0.9, stop=("\n", "END"), seed=5)
    )
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"]) == (0.7, 0.9, 5)
    assert sampled["stop"] == ["\n", "END"]
    assert vllm_sampling_kwargs(SamplingParams(), [2, 7])["stop_token_ids"] == [2, 7]


def test_penalties_bias_logprobs_and_json_constraints_reach_vllm() -> None:
    params = SamplingParams(
        max_tokens=0,
        presence_penalty=0.5,
        frequency_penalty=-1.0,
        logit_bias=((7, 5.0),),
        logprobs=True,
        top_logprobs=3,
        prompt_logprobs=True,
        constraint=("json_schema", '{"type": "object"}'),
    )
    kwargs = vllm_sampling_kwargs(params)
    assert (kwargs["presence_penalty"], kwargs["frequency_penalty"]) == (0.5, -1.0)
    assert kwargs["logit_bias"] == {7: 5.0}
    assert (kwargs["logprobs"], kwargs["prompt_logprobs"]) == (3, 3)
    assert kwargs["max_tokens"] == 1  # vLLM's least; the token is dropped (max_tokens 0)
    assert structured_kwargs(params.constraint) == {"json": {"type": "object"}}
    assert structured_kwargs(("json_object", "")) == {"json_object": True}
    plain = vllm_sampling_kwargs(SamplingParams())
    assert plain["logprobs"] is None and plain["logit_bias"] is None


def test_vllm_logprobs_become_openai_entries_and_max_tokens_0_keeps_only_the_prompt() -> None:
    def lp(value: float, rank: int, text: str) -> Any:
        return SimpleNamespace(logprob=value, rank=rank, decoded_token=text)

    request = PreparedRequest(
        input_ids=[4, 5],
        params=SamplingParams(max_tokens=2, logprobs=True, top_logprobs=1),
    )
    collector = DeltaCollector(request)
    collector.add("Hi", [9], None, [{9: lp(-0.5, 2, "Hi"), 3: lp(-0.1, 1, "Yo")}])
    collector.add("!", [8], "length", [{8: lp(-0.2, 1, "!")}])
    result = collector.result()
    assert result.logprobs is not None
    assert [(e["token"], e["logprob"]) for e in result.logprobs] == [("Hi", -0.5), ("!", -0.2)]
    yo = {"token": "Yo", "logprob": -0.1, "bytes": [89, 111]}
    assert result.logprobs[0]["top_logprobs"] == [yo]

    scoring = PreparedRequest(
        input_ids=[4, 5], params=SamplingParams(max_tokens=0, prompt_logprobs=True)
    )
    collector = DeltaCollector(scoring)
    collector.add_prompt([None, {5: lp(-2.0, 1, " b")}])
    collector.add("x", [1], "length")
    result = collector.result()
    assert (result.text, result.completion_tokens, result.finish_reason) == ("", 0, "length")
    assert [e["logprob"] for e in result.prompt_logprobs or []] == [None, -2.0]


def test_the_end_tokens_are_the_generation_configs_as_on_the_transformers_path(
    tmp_path: Path,
) -> None:
    build_tiny_model(tmp_path)
    tiny_eos = json.loads((tmp_path / "config.json").read_text())["eos_token_id"]
    assert eos_token_ids(tmp_path, None) == [tiny_eos]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 9]}))
    assert eos_token_ids(tmp_path, 1) == [5, 9]
    assert eos_token_ids(tmp_path / "missing", 3) == [3]


def test_engine_arguments_ignore_the_checkpoints_generation_config(tmp_path: Path) -> None:
    kwargs = engine_kwargs(tmp_path, 0.45)
    assert kwargs["model"] == str(tmp_path) and kwargs["tokenizer"] == str(tmp_path)
    assert kwargs["generation_config"] == "vllm"
    assert kwargs["gpu_memory_utilization"] == 0.45


def test_vllm_finish_reasons_map_to_ours() -> None:
    assert finish_reason_of("length", 3, 8) == "length"
    assert finish_reason_of("stop", 8, 8) == "stop"
    assert finish_reason_of("abort", 2, 8) == "stop"  # cancelled, like a cancelled row
    assert finish_reason_of(None, 8, 8) == "length"
    assert finish_reason_of(None, 2, 8) == "stop"


def test_deltas_accumulate_into_text_usage_and_finish_reason() -> None:
    request = PreparedRequest(input_ids=[1, 2, 3], params=SamplingParams(max_tokens=5))
    collector = DeltaCollector(request)
    assert collector.add("Hel", [10], None) == "Hel"
    assert collector.add("lo", [11, 12], None) == "lo"
    assert collector.add("", [0], "stop") == ""  # the EOS token: counted, no text
    result = collector.result()
    assert result == GenerationResult("Hello", "stop", prompt_tokens=3, completion_tokens=4)


def test_a_stop_string_never_reaches_the_final_text() -> None:
    request = PreparedRequest(input_ids=[1], params=SamplingParams(stop=("END",)))
    collector = DeltaCollector(request)
    collector.add("one END two", [5, 6, 7], "stop")
    assert collector.result().text == "one "


# --------------------------------------------------------------------------- the engine wrapper


class StandInEngine:
    """Speaks vLLM's AsyncLLMEngine.generate protocol: an async generator of deltas.

    Each step yields one RequestOutput-shaped delta; the last carries its finish reason.
    Closing the generator (the consumer was cancelled) is how vLLM learns of an abort.
    """

    def __init__(self, pieces: list[str], step_s: float = 0.0) -> None:
        self.pieces = pieces
        self.step_s = step_s
        self.aborted: list[str] = []
        self.shut_down = False

    async def generate(self, prompt: Any, sampling: Any, request_id: str) -> AsyncIterator[Any]:
        try:
            for i, piece in enumerate(self.pieces):
                await asyncio.sleep(self.step_s)
                last = i == len(self.pieces) - 1
                completion = SimpleNamespace(
                    text=piece, token_ids=[i], finish_reason="length" if last else None
                )
                yield SimpleNamespace(outputs=[completion], finished=last)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise

    def shutdown(self) -> None:
        self.shut_down = True


def stand_in_inputs(request: PreparedRequest, stop_token_ids: Any) -> tuple[Any, Any]:
    return request.input_ids, vllm_sampling_kwargs(request.params, stop_token_ids)


def test_the_vllm_engine_streams_deltas_then_the_result_through_the_lane_interface() -> None:
    seen: list[tuple[bool, GenerationResult]] = []
    engine = VLLMEngine(
        "m",
        StandInEngine(["a", "b", "c"]),
        on_result=lambda req, res: seen.append((req.cancelled, res)),
        build_inputs=stand_in_inputs,
    )
    request = PreparedRequest(input_ids=[1, 2], params=SamplingParams(max_tokens=3))

    async def collect() -> list[Any]:
        return [item async for item in generation.stream(engine, request)]

    items = asyncio.run(collect())
    assert items[:3] == ["a", "b", "c"]
    assert items[3] == GenerationResult("abc", "length", prompt_tokens=2, completion_tokens=3)
    assert seen == [(False, items[3])]
    assert engine.load == 0


def test_leaving_a_stream_early_aborts_the_request_in_the_engine() -> None:
    seen: list[tuple[bool, GenerationResult]] = []
    stand_in = StandInEngine(["x"] * 500, step_s=0.01)
    engine = VLLMEngine(
        "m",
        stand_in,
        on_result=lambda req, res: seen.append((req.cancelled, res)),
        build_inputs=stand_in_inputs,
    )
    request = PreparedRequest(input_ids=[1], params=SamplingParams(max_tokens=500))

    async def leave_after_two() -> None:
        events = generation.stream(engine, request)
        got = [await anext(events), await anext(events)]
        assert got == ["x", "x"]
        await events.aclose()  # what a disconnecting client's response does
        while not seen:
            await asyncio.sleep(0.01)

    asyncio.run(leave_after_two())
    assert len(stand_in.aborted) == 1
    cancelled, result = seen[0]
    assert cancelled and result.finish_reason == "stop"
    assert 2 <= result.completion_tokens < 500


def test_closing_lets_running_requests_finish_then_shuts_vllm_down_and_refuses_new_ones() -> None:
    stand_in = StandInEngine(["a"] * 20, step_s=0.01)
    engine = VLLMEngine("m", stand_in, build_inputs=stand_in_inputs)

    async def run() -> GenerationResult:
        running = asyncio.ensure_future(
            generation.generate(engine, PreparedRequest([1], SamplingParams(max_tokens=20)))
        )
        while not engine.running:
            await asyncio.sleep(0.005)
        engine.close()  # an unload or a redeploy's switch, while the request runs
        with pytest.raises(generation.ModelNotReady):
            await generation.generate(engine, PreparedRequest([1], SamplingParams()))
        return await running

    finished = asyncio.run(run())
    assert finished.text == "a" * 20 and finished.completion_tokens == 20
    deadline = time.monotonic() + 10
    while not stand_in.shut_down and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stand_in.shut_down
