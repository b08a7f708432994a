"""Exports of a saved model: ONNX (checked against torch with onnxruntime), int8 dynamic
quantisation for CPU, and LoRA adapters merged into their base. Paths in, results out."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Progress = Callable[[float], None]
# Tokenizer and generation files copied beside the ONNX graph so the export is self-contained.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
QUALITY_ROWS = 8
QUALITY_TEXTS = (
    "the cat sat on the mat",
    "we like to read books in the park",
    "hello, how are you today?",
    "one two three four five six seven",
)


def load_causal_lm(folder: Path) -> tuple[Any, Any]:
    """Model (fp32, eval) and tokenizer from a safetensors folder or a folder with one GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if ggufs:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0])
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=ggufs[0])
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True)
    model.eval()
    return model, tokenizer


def _logits_only(model: Any, **call_kwargs: Any) -> Any:
    """input_ids + attention_mask -> logits: the graph ONNX consumers run. A causal LM is
    called with use_cache=False (no cache in the graph); a sequence classifier with nothing
    more, so its logits are the class logits."""
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **call_kwargs)
            return out.logits

    return Wrapper().eval()


def _is_classifier(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def _load_for_export(source: Path) -> tuple[Any, Any, Any, bool]:
    """(model, tokenizer, logits-only wrapper, is a classifier)."""
    if _is_classifier(source):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(str(source)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        return model, tokenizer, _logits_only(model), True
    model, tokenizer = load_causal_lm(source)
    return model, tokenizer, _logits_only(model, use_cache=False), False


def _quality_rows(
    tokenizer: Any, sample: tuple[Path, str] | None, classifier: bool
) -> tuple[list[str], list[str | None]]:
    """Texts to compare the variants on (the version's own data when known), and their labels
    (a classifier's rows; None where a row has none)."""
    texts: list[str] = list(QUALITY_TEXTS)
    labels: list[str | None] = [None] * len(texts)
    if sample is None:
        return texts, labels
    from workers.engine.data import LabeledText, read_rows, render_rows

    rows = read_rows(*sample)[:QUALITY_ROWS]
    if classifier:
        labelled = [r for r in rows if isinstance(r, LabeledText)]
        if labelled:
            return [r.text for r in labelled], [r.label for r in labelled]
        return texts, labels
    rendered = list(render_rows(rows, tokenizer))
    return (rendered, [None] * len(rendered)) if rendered else (texts, labels)


def _classification_quality(
    logits: list[Any], reference: list[Any], labels: list[str | None], id2label: dict[int, str]
) -> dict[str, float | None]:
    """How often a variant picks the class torch picks, and its accuracy on labelled rows."""
    picked = [int(out[0].argmax()) for out in logits]
    agreement = sum(p == int(r[0].argmax()) for p, r in zip(picked, reference, strict=True))
    known = [(p, label) for p, label in zip(picked, labels, strict=True) if label is not None]
    accuracy = sum(id2label.get(p) == label for p, label in known) / len(known) if known else None
    return {"agreement": agreement / max(len(picked), 1), "accuracy": accuracy}


def export_onnx(
    source: Path,
    out_dir: Path,
    *,
    quantize: bool,
    progress: Progress,
    sample: tuple[Path, str] | None = None,
) -> dict[str, Any]:
    """model.onnx (+ model.int8.onnx) in out_dir, and a side-by-side report.

    The report compares torch fp32, ONNX fp32 and ONNX int8 on the same token rows: file size,
    median latency of a forward pass, max |logits difference| against torch, and perplexity (a
    classifier: how often it picks torch's class, and its accuracy on labelled rows).
    The rows are the first few of `sample` (the version's training data: file, format) when
    given, so perplexity means something; generic sentences otherwise.
    """
    import numpy as np
    import onnxruntime as ort
    import torch
    from torch.export import Dim

    torch.manual_seed(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer, wrapper, classifier = _load_for_export(source)
    progress(0.1)
    n_positions = getattr(model.config, "n_positions", None)  # GPT-2's name for it
    max_positions = getattr(model.config, "max_position_embeddings", 1024)
    context = int(n_positions or max_positions)
    example = torch.randint(0, model.config.vocab_size, (2, 8))
    batch, seq = Dim("batch", min=1, max=64), Dim("sequence", min=2, max=context)
    program = torch.onnx.export(
        wrapper,
        (example, torch.ones_like(example)),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        dynamo=True,
        optimize=True,
    )
    fp32_path = out_dir / "model.onnx"
    assert program is not None  # only the legacy exporter (dynamo=False) returns None
    program.save(str(fp32_path), external_data=False)
    progress(0.5)
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)

    texts, labels = _quality_rows(tokenizer, sample, classifier)
    rows = [tokenizer(text, return_tensors="pt")["input_ids"][:, :context] for text in texts]
    kept = [i for i, r in enumerate(rows) if r.shape[1] >= 2]
    rows, labels = [rows[i] for i in kept], [labels[i] for i in kept]
    id2label = {int(k): str(v) for k, v in (getattr(model.config, "id2label", None) or {}).items()}

    def torch_logits(ids: Any) -> Any:
        with torch.no_grad():
            return wrapper(ids, torch.ones_like(ids)).numpy()

    def onnx_runner(path: Path) -> Callable[[Any], Any]:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda ids: session.run(
            None, {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}
        )[0]

    variants: dict[str, tuple[Callable[[Any], Any], int]] = {
        "torch_fp32": (torch_logits, sum(p.stat().st_size for p in source.glob("*.safetensors"))),
        "onnx_fp32": (onnx_runner(fp32_path), fp32_path.stat().st_size),
    }
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8_path = out_dir / "model.int8.onnx"
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
        variants["onnx_int8"] = (onnx_runner(int8_path), int8_path.stat().st_size)
    progress(0.7)
    reference = [torch_logits(ids) for ids in rows]
    report: dict[str, Any] = {}
    for name, (run, size) in variants.items():
        outputs = [run(ids) for ids in rows]
        timings = []
        for _ in range(3):
            for ids in rows:
                started = time.perf_counter()
                run(ids)
                timings.append((time.perf_counter() - started) * 1000)
        diff = max(float(np.abs(o - r).max()) for o, r in zip(outputs, reference, strict=True))
        report[name] = {
            "size_bytes": int(size),
            "latency_ms": round(statistics.median(timings), 3),
            "max_abs_logits_diff": diff,
            # A classifier has no perplexity: its quality is its answers.
            **(
                _classification_quality(outputs, reference, labels, id2label)
                if classifier
                else {"perplexity": _perplexity(outputs, rows)}
            ),
        }
    progress(0.95)
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    return report


def _perplexity(logits: list[Any], rows: list[Any]) -> float:
    import numpy as np

    from workers.engine.metrics import perplexity

    nll, count = 0.0, 0
    for out, ids in zip(logits, rows, strict=True):
        scores = out[0, :-1].astype("float64")
        targets = ids[0, 1:].numpy()
        scores = scores - scores.max(axis=-1, keepdims=True)
        log_probs = scores - np.log(np.exp(scores).sum(axis=-1, keepdims=True))
        nll -= float(log_probs[np.arange(len(targets)), targets].sum())
        count += len(targets)
    value = perplexity(nll, count)
    return value if math.isfinite(value) else float("nan")


def merge_adapter(adapter: Path, base: Path, out_dir: Path, progress: Progress) -> dict[str, Any]:
    """A LoRA adapter merged into its base model: a plain Hugging Face folder (safetensors)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    model, _ = load_causal_lm(base)
    progress(0.3)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    progress(0.7)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer_dir = adapter if (adapter / "tokenizer_config.json").is_file() else base
    ggufs = sorted(p.name for p in tokenizer_dir.glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(
        str(tokenizer_dir), **({"gguf_file": ggufs[0]} if ggufs else {})
    )
    tokenizer.save_pretrained(str(out_dir))
    return {"parameters": int(merged.num_parameters())}
