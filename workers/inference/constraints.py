"""Sampling-side logits processing for the transformers lanes: OpenAI's penalties and logit
bias, and JSON constraints compiled by xgrammar (grammar-constrained decoding).

llama.cpp and vLLM have their own samplers for all of this; the transformers lanes serve what
they do not (scratch GPT-2s, the LSTM, safetensors versions on a CPU), one request per batch
whenever any of it is asked for (SamplingParams.batch_key).
"""

from __future__ import annotations

from typing import Any

from transformers import LogitsProcessor

from workers.inference.generation import SamplingParams


class PenaltiesAndBias(LogitsProcessor):
    """OpenAI's additive penalties and bias, over the tokens generated so far (not the prompt):
    logit -= frequency_penalty * count + presence_penalty * (count > 0); logit += bias."""

    def __init__(self, params: SamplingParams, prompt_len: int) -> None:
        self.params = params
        self.prompt_len = prompt_len

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        params = self.params
        vocab = scores.shape[-1]
        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] and (params.frequency_penalty or params.presence_penalty):
            counts = torch.zeros_like(scores)
            counts.scatter_add_(
                1, generated.clamp(max=vocab - 1), torch.ones_like(generated, dtype=scores.dtype)
            )
            scores = scores - params.frequency_penalty * counts
            scores = scores - params.presence_penalty * (counts > 0).to(scores.dtype)
        if params.logit_bias:
            scores = scores.clone()
            for token, bias in params.logit_bias:
                if 0 <= token < vocab:
                    scores[:, token] += bias
        return scores


def _compiler(tokenizer: Any, model: Any) -> Any:
    """One xgrammar compiler per tokenizer (it caches compiled grammars), kept on it."""
    compiler = getattr(tokenizer, "_llmide_xgrammar", None)
    if compiler is None:
        import xgrammar

        vocab_size = getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer)
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        compiler = xgrammar.GrammarCompiler(info)
        tokenizer._llmide_xgrammar = compiler
    return compiler


def xgrammar_compile(tokenizer: Any, model: Any, constraint: tuple[str, str]) -> Any:
    """The compiled grammar of ("json_object", "") or ("json_schema", schema JSON)."""
    compiler = _compiler(tokenizer, model)
    kind, schema = constraint
    # Compact JSON: a small model left free whitespace can pad an answer until its limit.
    if kind == "json_object":
        return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
    return compiler.compile_json_schema(schema, any_whitespace=False)


def grammar_processor(compiled: Any) -> Any:
    """A fresh (stateful) transformers logits processor for one generation."""
    import xgrammar

    return xgrammar.contrib.hf.LogitsProcessor(compiled)
