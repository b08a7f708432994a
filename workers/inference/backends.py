"""Which engine serves a model: vLLM, llama.cpp or the built-in transformers lanes, and why.

`LLMIDE_INFERENCE_BACKEND` (settings.inference_backend) asks for one: `auto` takes vLLM only
where it can really serve the model (vllm imports, a CUDA GPU is present, and the folder is a
Hugging Face causal LM whose architecture vLLM knows), else llama.cpp where llama-cpp-python
imports and the model is a GGUF file or a safetensors causal LM our GGUF export writes (GPT-2
and Llama families: exported to q8_0 once when it loads), else the transformers lanes
(classifiers, encoders, the LSTM baseline, other architectures); `vllm` and `llamacpp` insist
and fail the load with the reason otherwise; `transformers` never tries another engine.

The decision is a pure function of facts about the machine and the model folder (`Machine`,
`model_facts`), so its rules are tested on any machine; `probe_machine` gathers the real facts.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

Backend = Literal["transformers", "vllm", "llamacpp"]
Requested = Literal["auto", "transformers", "vllm", "llamacpp"]
# Architecture suffixes of text generators in transformers' naming; vLLM's registry is checked
# too when vLLM is present, this is the test that works without it.
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# Architectures this project defines itself (workers/engine): transformers loads them through
# its Auto registration, vLLM has no implementation of them.
OWN_ARCHITECTURES = frozenset({"LstmForCausalLM"})
# What workers/engine/gguf.py writes as GGUF (its SUPPORTED_ARCHITECTURES; a test keeps the two
# equal): a safetensors version of these is exported for llama.cpp when it loads on a CPU.
GGUF_EXPORT_ARCHITECTURES = frozenset({"GPT2LMHeadModel", "LlamaForCausalLM"})
# q8_0, not f16: half the bytes per token read in a memory-bound CPU decode and half the disk,
# at a quality loss llama.cpp's own checks (and tests/registry) find in the last digits only;
# q4_k_m would be smaller again but changes small models' greedy answers.
GGUF_EXPORT_QUANTIZATION = "q8_0"


class BackendUnavailable(RuntimeError):
    """An engine was asked for explicitly and cannot serve this model here; the message says why."""


@dataclass(frozen=True)
class Machine:
    """What this inference process can use: vLLM (and the architectures it loads), a GPU."""

    vllm_version: str | None  # None: vllm does not import
    cuda: bool
    vllm_architectures: frozenset[str] | None = None  # None: unknown (vLLM absent)
    vllm_error: str | None = None  # why `import vllm` failed, when it is installed but broken
    llamacpp_version: str | None = None  # None: llama_cpp does not import
    llamacpp_error: str | None = None  # why `import llama_cpp` failed, when it is installed
    llamacpp_export: bool = True  # LLMIDE_LLAMACPP_EXPORT: export safetensors LMs to GGUF


# Architectures answered by /predict: a label per text, or a label per token (entities).
CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification")


@dataclass(frozen=True)
class ModelFacts:
    """What the model folder is, as far as choosing an engine goes."""

    architectures: tuple[str, ...]
    gguf: bool
    classifier: bool

    @property
    def gguf_exportable(self) -> bool:
        """Safetensors weights of an architecture our GGUF export writes."""
        return not self.gguf and bool(GGUF_EXPORT_ARCHITECTURES.intersection(self.architectures))


def model_facts(directory: Path, gguf_file: str | None) -> ModelFacts:
    """Read the folder's config.json (architectures) without importing transformers."""
    architectures: tuple[str, ...] = ()
    config = directory / "config.json"
    if config.is_file():
        try:
            found = json.loads(config.read_text()).get("architectures") or []
            architectures = tuple(str(a) for a in found)
        except (ValueError, AttributeError):
            architectures = ()
    return ModelFacts(
        architectures=architectures,
        gguf=gguf_file is not None,
        classifier=any(a.endswith(CLASSIFIER_SUFFIXES) for a in architectures),
    )


def vllm_refusal(machine: Machine, model: ModelFacts) -> str | None:
    """Why vLLM cannot serve this model on this machine, or None when it can."""
    if machine.vllm_version is None:
        if machine.vllm_error:
            return f"vLLM is installed but does not import ({machine.vllm_error})"
        return "vLLM is not installed in the inference process (pip install vllm)"
    if not machine.cuda:
        return "no CUDA GPU is available to the inference process; vLLM needs one"
    if model.gguf:
        return "the model is a GGUF file; vLLM serves Hugging Face model folders (safetensors)"
    if model.classifier:
        return "the model is a classifier (per text or per token); vLLM serves text generation"
    if not model.architectures:
        return "the model folder's config.json names no architecture"
    if OWN_ARCHITECTURES.intersection(model.architectures):
        return f"{', '.join(model.architectures)} is this project's own architecture"
    if machine.vllm_architectures is not None:
        if not any(a in machine.vllm_architectures for a in model.architectures):
            return (
                f"vLLM {machine.vllm_version} does not support the architecture "
                f"{', '.join(model.architectures)}"
            )
    elif not any(a.endswith(CAUSAL_SUFFIXES) for a in model.architectures):
        return f"{', '.join(model.architectures)} is not a causal language model"
    return None


def llamacpp_refusal(machine: Machine, model: ModelFacts) -> str | None:
    """Why llama.cpp cannot serve this model on this machine, or None when it can."""
    if machine.llamacpp_version is None:
        if machine.llamacpp_error:
            return f"llama-cpp-python is installed but does not import ({machine.llamacpp_error})"
        return "llama-cpp-python is not installed in the inference process"
    if model.classifier:
        return "the model is a classifier (per text or per token); llama.cpp serves text generation"
    if not model.gguf:
        if OWN_ARCHITECTURES.intersection(model.architectures):
            return f"{', '.join(model.architectures)} is this project's own architecture"
        if not model.gguf_exportable:
            return (
                "the version has safetensors weights only, llama.cpp serves GGUF files and the "
                f"GGUF export writes {' and '.join(sorted(GGUF_EXPORT_ARCHITECTURES))}, not "
                f"{', '.join(model.architectures) or 'a folder without an architecture'}"
            )
        if not machine.llamacpp_export:
            return (
                "the version has safetensors weights only and LLMIDE_LLAMACPP_EXPORT=false "
                "(llama.cpp serves GGUF files; export the version to GGUF to serve it so)"
            )
    return None


def choose_engine(requested: Requested, machine: Machine, model: ModelFacts) -> tuple[Backend, str]:
    """The engine for one model and the reason, in words a person reads on the deployment.

    Raises BackendUnavailable when `vllm` or `llamacpp` is asked for in vain. Classifiers are
    answered by /predict, which only the transformers path has: they use it whatever is asked
    for, so a `vllm` setting does not break classifier deployments.
    """
    if requested == "transformers":
        return "transformers", "LLMIDE_INFERENCE_BACKEND=transformers"
    if model.classifier:
        return (
            "transformers",
            "a classifier (labels per text or entities): /predict is served by transformers",
        )
    vllm_reason = vllm_refusal(machine, model)
    if vllm_reason is None and requested in ("auto", "vllm"):
        return "vllm", f"a causal LM on a CUDA GPU with vLLM {machine.vllm_version}"
    if requested == "vllm":
        raise BackendUnavailable(
            f"LLMIDE_INFERENCE_BACKEND=vllm, but vLLM cannot serve this model: {vllm_reason}. "
            "Set LLMIDE_INFERENCE_BACKEND=auto to fall back to another engine."
        )
    llama_reason = llamacpp_refusal(machine, model)
    if llama_reason is None:
        where = "" if requested == "llamacpp" else f" (vLLM: {vllm_reason})"
        if not model.gguf:
            return "llamacpp", (
                f"a safetensors causal LM on a CPU: exported to GGUF "
                f"({GGUF_EXPORT_QUANTIZATION}) when it loads, then llama.cpp (llama-cpp-python "
                f"{machine.llamacpp_version}) decodes it with continuous batching{where}"
            )
        return "llamacpp", (
            f"a GGUF causal LM: llama.cpp (llama-cpp-python {machine.llamacpp_version}) "
            f"decodes it with continuous batching{where}"
        )
    if requested == "llamacpp":
        raise BackendUnavailable(
            f"LLMIDE_INFERENCE_BACKEND=llamacpp, but llama.cpp cannot serve this model: "
            f"{llama_reason}. Set LLMIDE_INFERENCE_BACKEND=auto to fall back to another engine."
        )
    return "transformers", f"llama.cpp: {llama_reason}; vLLM: {vllm_reason}"


def choose_backend(requested: Requested, machine: Machine, model: ModelFacts) -> Backend:
    """The engine for one model (choose_engine without the reason)."""
    return choose_engine(requested, machine, model)[0]


def probe_machine() -> Machine:
    """The real facts: does vllm import (and which architectures it loads), is CUDA there.

    vllm is imported only when it is installed, so on machines without it this is cheap.
    """
    version: str | None = None
    error: str | None = None
    architectures: frozenset[str] | None = None
    if importlib.util.find_spec("vllm") is not None:
        try:
            import vllm

            version = str(getattr(vllm, "__version__", "unknown"))
            architectures = frozenset(vllm.ModelRegistry.get_supported_archs())
        except Exception as exc:  # a broken install is reported, not fatal for transformers
            logger.warning("vllm is installed but does not import: %s", exc)
            version, error = None, f"{type(exc).__name__}: {exc}"
    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency of this process
        cuda = False
    llama_version, llama_error = probe_llamacpp()
    return Machine(
        vllm_version=version,
        cuda=cuda,
        vllm_architectures=architectures,
        vllm_error=error,
        llamacpp_version=llama_version,
        llamacpp_error=llama_error,
    )


def probe_llamacpp() -> tuple[str | None, str | None]:
    """(version, None) when llama_cpp imports; (None, why) when installed but broken."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None, None
    try:
        import llama_cpp

        return str(getattr(llama_cpp, "__version__", "unknown")), None
    except Exception as exc:  # a broken build is reported, and transformers serves instead
        logger.warning("llama_cpp is installed but does not import: %s", exc)
        return None, f"{type(exc).__name__}: {exc}"
