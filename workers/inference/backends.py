"""Which engine serves a model: the built-in transformers lanes or vLLM.

`LLMIDE_INFERENCE_BACKEND` (settings.inference_backend) asks for one: `auto` takes vLLM only
where it can really serve the model (vllm imports, a CUDA GPU is present, and the folder is a
Hugging Face causal LM whose architecture vLLM knows), else the transformers lanes; `vllm`
insists and fails the load with the reason otherwise; `transformers` never tries vLLM.

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

Backend = Literal["transformers", "vllm"]
Requested = Literal["auto", "transformers", "vllm"]
# Architecture suffixes of text generators in transformers' naming; vLLM's registry is checked
# too when vLLM is present, this is the test that works without it.
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# Architectures this project defines itself (workers/engine): transformers loads them through
# its Auto registration, vLLM has no implementation of them.
OWN_ARCHITECTURES = frozenset({"LstmForCausalLM"})


class BackendUnavailable(RuntimeError):
    """vLLM was asked for explicitly and cannot serve this model here; the message says why."""


@dataclass(frozen=True)
class Machine:
    """What this inference process can use: vLLM (and the architectures it loads), a GPU."""

    vllm_version: str | None  # None: vllm does not import
    cuda: bool
    vllm_architectures: frozenset[str] | None = None  # None: unknown (vLLM absent)
    vllm_error: str | None = None  # why `import vllm` failed, when it is installed but broken


@dataclass(frozen=True)
class ModelFacts:
    """What the model folder is, as far as choosing an engine goes."""

    architectures: tuple[str, ...]
    gguf: bool
    classifier: bool


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
        classifier=any(a.endswith("ForSequenceClassification") for a in architectures),
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
        return "the model is a sequence classifier; vLLM serves text generation models"
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


def choose_backend(requested: Requested, machine: Machine, model: ModelFacts) -> Backend:
    """The engine for one model; raises BackendUnavailable when `vllm` is asked for in vain.

    Classifiers are answered by /predict, which only the transformers path has: they use it
    whatever is asked for, so a `vllm` setting does not break classifier deployments.
    """
    if requested == "transformers" or model.classifier:
        return "transformers"
    reason = vllm_refusal(machine, model)
    if reason is None:
        return "vllm"
    if requested == "vllm":
        raise BackendUnavailable(
            f"LLMIDE_INFERENCE_BACKEND=vllm, but vLLM cannot serve this model: {reason}. "
            "Set LLMIDE_INFERENCE_BACKEND=auto to fall back to the built-in transformers engine."
        )
    return "transformers"


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
    return Machine(
        vllm_version=version, cuda=cuda, vllm_architectures=architectures, vllm_error=error
    )
