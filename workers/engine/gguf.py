"""GGUF export of a causal LM for llama.cpp and Ollama: our own tensor-name mapping for the
`gpt2` and `llama` architectures written as f16 with gguf-py's GGUFWriter, then quantised to
q8_0 / q4_k_m by llama.cpp itself (llama-cpp-python's `llama_model_quantize`).

Paths in, files out: `export_gguf` writes `<name>.<quantization>.gguf` and an Ollama
`Modelfile` into a folder; `ensure_gguf` keeps one file per (weights, quantisation) in a cache
folder for an engine that wants a GGUF of a Hugging Face folder. No training code is imported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Progress = Callable[[float], None]
QUANTIZATIONS = ("f16", "q8_0", "q4_k_m")
# Transformers architecture -> llama.cpp architecture. Only what our mapping below covers.
SUPPORTED_ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama"}
# The GGUF general.architecture values a GGUF-imported version may carry.
SUPPORTED_GGUF_ARCHITECTURES = frozenset(SUPPORTED_ARCHITECTURES.values())
# GPT-2's MLP activation in llama.cpp is the tanh approximation of GELU.
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class GGUFExportError(ValueError):
    """The model cannot be written as GGUF; the message says why in a person's terms."""


# --- tensors ---------------------------------------------------------------------------------
_GPT2_BLOCK = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
# HF's GPT-2 uses Conv1D layers: weights stored (in, out), where every other model stores
# (out, in). These are transposed so ggml's matmul sees the usual layout.
_GPT2_CONV1D = frozenset({"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"})
_LLAMA_BLOCK = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_BLOCK_RE = re.compile(r"^(?:transformer\.h|model\.layers)\.(\d+)\.(.+)\.(weight|bias)$")
# Buffers transformers keeps in the state dict that are not weights (causal masks, RoPE tables).
_SKIPPED_RE = re.compile(r"\.attn\.(masked_)?bias$|rotary_emb\.inv_freq$")


def rope_interleave(weight: Any, heads: int) -> Any:
    """Reorder q/k projection rows from HF's rotate-half RoPE layout to llama.cpp's.

    transformers rotates the two halves of each head (x[:d/2], x[d/2:]); llama.cpp's `llama`
    graph rotates adjacent pairs (x[0], x[1]), ... So each head's rows are re-ordered from
    [first half, second half] to interleaved pairs; the dot products q·k are then unchanged.
    """
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _gpt2_name(hf: str, tied: bool) -> tuple[str | None, bool]:
    """(GGUF name, transpose?) of a GPT-2 tensor; None: not written."""
    name = hf.removeprefix("transformer.")
    fixed = {
        "wte.weight": "token_embd.weight",
        "wpe.weight": "position_embd.weight",
        "ln_f.weight": "output_norm.weight",
        "ln_f.bias": "output_norm.bias",
    }
    if name in fixed:
        return fixed[name], False
    if hf == "lm_head.weight":
        return (None if tied else "output.weight"), False
    match = _BLOCK_RE.match(hf)
    if match and match.group(2) in _GPT2_BLOCK:
        block, part, kind = match.groups()
        transpose = part in _GPT2_CONV1D and kind == "weight"
        return f"blk.{block}.{_GPT2_BLOCK[part]}.{kind}", transpose
    raise GGUFExportError(f"GPT-2 tensor {hf!r} has no GGUF name in this exporter")


def _llama_name(hf: str, tied: bool) -> str | None:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    if hf in fixed:
        return fixed[hf]
    if hf == "lm_head.weight":
        return None if tied else "output.weight"
    match = _BLOCK_RE.match(hf)
    if match and match.group(2) in _LLAMA_BLOCK and match.group(3) == "weight":
        return f"blk.{match.group(1)}.{_LLAMA_BLOCK[match.group(2)]}.weight"
    raise GGUFExportError(f"Llama tensor {hf!r} has no GGUF name in this exporter")


def _tensors(model: Any, arch: str) -> Iterator[tuple[str, Any]]:
    """(GGUF name, numpy array) for every weight: matrices f16, vectors (norms, biases) f32."""
    import numpy as np

    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", True))
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    for hf, tensor in model.state_dict().items():
        if _SKIPPED_RE.search(hf):
            continue
        data = tensor.detach().to("cpu").float().numpy()
        if arch == "gpt2":
            name, transpose = _gpt2_name(hf, tied)
            if transpose:
                data = data.T
        else:
            name = _llama_name(hf, tied)
            if name is not None and name.endswith(".attn_q.weight"):
                data = rope_interleave(data, heads)
            elif name is not None and name.endswith(".attn_k.weight"):
                data = rope_interleave(data, kv_heads)
        if name is None:
            continue
        dtype = np.float16 if data.ndim >= 2 else np.float32
        yield name, np.ascontiguousarray(data.astype(dtype))


# --- hyperparameters -------------------------------------------------------------------------
def gguf_architecture(model: Any) -> str:
    """The llama.cpp architecture of a transformers model, or GGUFExportError naming it.

    By the model's class first: a model loaded from a GGUF file has no `architectures` in its
    config."""
    config = model.config
    names = [type(model).__name__, *(getattr(config, "architectures", None) or [])]
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[name]
    shown = ", ".join(names) or getattr(config, "model_type", "unknown")
    raise GGUFExportError(
        f"GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)}; this model is {shown}, "
        "which llama.cpp cannot run from our export"
    )


def _write_hparams(writer: Any, config: Any, arch: str) -> None:
    if arch == "gpt2":
        activation = getattr(config, "activation_function", "gelu_new")
        if activation not in GPT2_ACTIVATIONS:
            raise GGUFExportError(
                f"GPT-2 activation {activation!r}: llama.cpp's gpt2 graph uses tanh-GELU only"
            )
        writer.add_context_length(int(config.n_positions))
        writer.add_embedding_length(int(config.n_embd))
        writer.add_feed_forward_length(int(config.n_inner or 4 * config.n_embd))
        writer.add_block_count(int(config.n_layer))
        writer.add_head_count(int(config.n_head))
        writer.add_layer_norm_eps(float(config.layer_norm_epsilon))
        return
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise GGUFExportError("Llama models with attention or MLP biases are not exported")
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ("default", None):
        raise GGUFExportError(f"Llama RoPE scaling {rope_type!r} is not exported (only none)")
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    if getattr(config, "hidden_act", "silu") != "silu":
        raise GGUFExportError(f"Llama activation {config.hidden_act!r}: llama.cpp uses SiLU")
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    theta = getattr(config, "rope_theta", None) or (
        (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    )
    writer.add_rope_freq_base(float(theta or 10000.0))


# --- tokenizer -------------------------------------------------------------------------------
def _pre_tokenizer_name(spec: dict[str, Any] | None) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer: its regex, matched by structure."""
    spec = spec or {}
    if spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"
    parts = spec.get("pretokenizers") or []
    if (
        spec.get("type") == "Sequence"
        and len(parts) == 2
        and parts[0].get("type") == "Digits"
        and parts[0].get("individual_digits")
        and parts[1].get("type") == "ByteLevel"
        and parts[1].get("use_regex", True)
    ):
        return "smollm"  # digits one by one, then GPT-2's regex (StarCoder / SmolLM)
    raise GGUFExportError(
        f"tokenizer pre-tokenizer {json.dumps(spec)[:200]} has no llama.cpp equivalent here"
    )


def _looks_special(token: str) -> bool:
    return token.startswith("<|") and token.endswith("|>")


def _stop_ids(tokenizer: Any, generation_eos: list[int]) -> list[int]:
    ids = [tokenizer.eos_token_id, *generation_eos]
    return [i for i in dict.fromkeys(ids) if isinstance(i, int)]


def _write_tokenizer(
    writer: Any,
    tokenizer: Any,
    vocab_size: int,
    *,
    generation_eos: list[int],
    pre: str | None,
) -> None:
    """tokenizer.ggml.*: the BPE vocabulary, merges, token types, special ids and template."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if (spec.get("model") or {}).get("type") != "BPE" or (spec.get("decoder") or {}).get(
        "type"
    ) != "ByteLevel":
        raise GGUFExportError("GGUF export needs a byte-level BPE tokenizer (GPT-2 style)")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise GGUFExportError("the tokenizer has more tokens than the model's embedding rows")
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:  # embedding rows beyond the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(token)
            special = added[i].special or _looks_special(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or _pre_tokenizer_name(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for add, value in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if isinstance(value, int):
            add(value)
    stops = _stop_ids(tokenizer, generation_eos)
    if stops:
        writer.add_eos_token_id(stops[0])
    if len(stops) > 1:  # the end of a chat turn: llama.cpp ends generation on it too
        writer.add_eot_token_id(stops[1])
    # Whether the tokenizer itself puts BOS/EOS around a text (llama.cpp would otherwise guess).
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    writer.add_add_bos_token(len(with_special) > len(plain) and with_special[0] != plain[0])
    writer.add_add_eos_token(len(with_special) > len(plain) and with_special[-1] != plain[-1])
    if isinstance(tokenizer.chat_template, str) and tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def generation_eos_ids(model: Any) -> list[int]:
    """The ids that end a generation per the model's generation_config (else its config)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    values = eos if isinstance(eos, list) else [eos]
    return [int(v) for v in values if isinstance(v, int)]


def stop_tokens(tokenizer: Any, generation_eos: list[int]) -> list[str]:
    """The texts of the tokens that end a generation (EOS, end of turn), for Ollama's stops."""
    ids = _stop_ids(tokenizer, generation_eos)
    return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]


# --- writing and quantising ------------------------------------------------------------------
def write_f16(
    model: Any,
    tokenizer: Any,
    path: Path,
    *,
    name: str,
    tokenizer_pre: str | None = None,
    generation_eos: list[int] | None = None,
) -> str:
    """The model as an f16 GGUF at `path`; returns the llama.cpp architecture."""
    import gguf

    arch = gguf_architecture(model)
    writer = gguf.GGUFWriter(str(path), arch)
    try:
        writer.add_type("model")
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        _write_hparams(writer, model.config, arch)
        vocab_size = int(model.config.vocab_size)
        writer.add_vocab_size(vocab_size)
        _write_tokenizer(
            writer,
            tokenizer,
            vocab_size,
            generation_eos=generation_eos_ids(model) if generation_eos is None else generation_eos,
            pre=tokenizer_pre,
        )
        for tensor_name, data in _tensors(model, arch):
            writer.add_tensor(tensor_name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return arch


def quantize(
    source: Path,
    target: Path,
    quantization: str,
    *,
    threads: int = 0,
    allow_requantize: bool = False,
) -> None:
    """llama.cpp's own quantiser: f16 GGUF -> q8_0 / q4_k_m GGUF.

    Tensors whose rows do not divide into k-quant blocks (256 values; small models have
    narrower rows) get llama.cpp's own fallback type, as its `llama-quantize` tool does.
    `allow_requantize` takes an already quantised source (its tensors are de-quantised first).
    """
    import llama_cpp

    ftypes = {
        "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    }
    if quantization not in ftypes:
        raise GGUFExportError(f"unknown GGUF quantization {quantization!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[quantization]
    params.nthread = threads
    params.allow_requantize = allow_requantize
    # llama.cpp logs a line per tensor through llama-cpp-python's logger: keep the warnings.
    chatter = logging.getLogger("llama-cpp-python")
    level = chatter.level
    chatter.setLevel(max(level, logging.WARNING))
    try:
        code = llama_cpp.llama_model_quantize(
            str(source).encode(), str(target).encode(), llama_cpp.byref(params)
        )
    finally:
        chatter.setLevel(level)
    if code != 0 or not target.is_file():
        raise RuntimeError(f"llama.cpp could not quantize to {quantization} (code {code})")


def gguf_file_name(name: str, quantization: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:100] or "model"
    return f"{safe}.{quantization}.gguf"


def export_gguf(
    source: Path,
    out_dir: Path,
    *,
    quantization: str,
    name: str,
    progress: Progress,
) -> dict[str, Any]:
    """`<name>.<quantization>.gguf` and an Ollama `Modelfile` in out_dir; the export's report.

    `source` is a Hugging Face folder (safetensors) or a folder with one GGUF (an imported
    one is read back through transformers and rewritten, keeping its pre-tokenizer name).
    """
    from workers.engine.export import load_causal_lm
    from workers.engine.modelfile import modelfile

    if quantization not in QUANTIZATIONS:
        raise GGUFExportError(
            f"unknown GGUF quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_causal_lm(source)
    pre, source_eot = _source_tokenizer(source)
    eos_ids = list(dict.fromkeys([*generation_eos_ids(model), *source_eot]))
    progress(0.3)
    target = out_dir / gguf_file_name(name, quantization)
    f16 = target if quantization == "f16" else out_dir / f".{target.name}.f16.partial"
    try:
        arch = write_f16(
            model, tokenizer, f16, name=name, tokenizer_pre=pre, generation_eos=eos_ids
        )
        f16_size = f16.stat().st_size
        progress(0.7)
        if quantization != "f16":
            quantize(f16, target, quantization, threads=min(os.cpu_count() or 1, 8))
    finally:
        if f16 != target:
            f16.unlink(missing_ok=True)
    progress(0.85)
    context = int(
        getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    )
    agreement = compare_with_llama_cpp(model, tokenizer, target, context)
    progress(0.95)
    stops = stop_tokens(tokenizer, eos_ids)
    text = modelfile(target.name, tokenizer, stops)
    (out_dir / "Modelfile").write_text(text)
    return {
        "format": "gguf",
        "architecture": arch,
        "quantization": quantization,
        "file": target.name,
        "size_bytes": target.stat().st_size,
        "f16_size_bytes": f16_size,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "context_length": context,
        **agreement,
        "chat_template": bool(tokenizer.chat_template),
        "stop_tokens": stops,
        "ollama_template": "TEMPLATE" in text,
    }


def compare_with_llama_cpp(model: Any, tokenizer: Any, path: Path, context: int) -> dict[str, Any]:
    """The written file checked in llama.cpp against the transformers model it came from.

    On a few sentences: at every position, whether llama.cpp's most likely next token is
    transformers' (`top1_agreement`, share of positions) and the largest logit difference.
    A file llama.cpp cannot load fails the export here, before anyone downloads it.
    """
    import llama_cpp
    import numpy as np
    import torch

    from workers.engine.export import QUALITY_TEXTS

    rows = [tokenizer(text)["input_ids"][:context] for text in QUALITY_TEXTS]
    rows = [ids for ids in rows if len(ids) >= 2]
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=max(len(ids) for ids in rows),
        n_threads=min(os.cpu_count() or 1, 8),
        logits_all=True,
        verbose=False,
    )
    agree = total = 0
    diff = 0.0
    try:
        for ids in rows:
            llm.reset()
            llm.eval(ids)
            ours = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
            with torch.no_grad():
                theirs = model(torch.tensor([ids])).logits[0].float().numpy()
            agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            total += len(ids)
            diff = max(diff, float(np.abs(ours - theirs).max()))
    finally:
        llm.close()
    return {"top1_agreement": round(agree / max(total, 1), 4), "max_abs_logits_diff": diff}


def _source_tokenizer(source: Path) -> tuple[str | None, list[int]]:
    """What an imported GGUF declares that transformers' reading of it loses: the
    pre-tokenizer's name and the end-of-turn token. (None, []) for a safetensors folder."""
    ggufs = sorted(source.glob("*.gguf"))
    if not ggufs:
        return None, []
    from gguf import GGUFReader

    fields = GGUFReader(str(ggufs[0])).fields
    pre = fields.get("tokenizer.ggml.pre")
    eot = fields.get("tokenizer.ggml.eot_token_id")
    return (
        str(pre.contents()) if pre is not None else None,
        [int(eot.contents())] if eot is not None else [],
    )


def ensure_gguf(source: Path, cache_dir: Path, *, quantization: str, name: str = "model") -> Path:
    """A GGUF of `source` (a Hugging Face folder), exported once and then reused.

    The file lives under cache_dir/<sha256 of weights and config>-<quantization>/, so new
    weights get a new file and the same weights reuse the old one. It is written in a
    temporary folder and renamed into place, so a reader never sees half a file.
    """
    files = [
        path
        for path in sorted(source.iterdir())
        if path.is_file() and path.name.endswith((".safetensors", ".gguf", ".json"))
    ]
    return _cached_gguf(
        files,
        cache_dir,
        quantization,
        lambda staging: export_gguf(
            source, staging, quantization=quantization, name=name, progress=lambda _: None
        ),
    )


def ensure_requantized(source: Path, cache_dir: Path, *, quantization: str) -> Path:
    """`source` (a quantised GGUF file) re-quantised by llama.cpp, once, then reused.

    Kept like `ensure_gguf`'s exports: keyed by the file's bytes, written aside and renamed
    into place.
    """
    return _cached_gguf(
        [source],
        cache_dir,
        quantization,
        lambda staging: quantize(
            source,
            staging / f"{source.stem}.{quantization}.gguf",
            quantization,
            allow_requantize=True,
        ),
    )


def _cached_gguf(
    inputs: list[Path], cache_dir: Path, quantization: str, write: Callable[[Path], object]
) -> Path:
    """The GGUF `write` puts in a folder, under cache_dir/<sha256 of inputs>-<quantization>/.

    Written in a temporary folder and renamed into place, so a reader never sees half a
    file and two processes writing at once both end with one whole file.
    """
    import hashlib

    digest = hashlib.sha256()
    for path in inputs:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
    folder = cache_dir / f"{digest.hexdigest()[:32]}-{quantization}"
    existing = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    if existing:
        return existing[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gguf-", dir=cache_dir))
    try:
        write(staging)
        with contextlib.suppress(OSError):  # another process finished first: use its file
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(folder.glob("*.gguf"))[0]
