"""Evaluating a saved causal LM on rows of a dataset: perplexity, generation samples for a fixed
prompt set, and BLEU / ROUGE-L of generated replies against the reference for chat rows.

Perplexity counts the tokens training counts: a conversation's answers (`loss_mask`, the SFT
mask), not its prompts, so a fine-tuned version is not penalised for the prompts it was never
trained on."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from datacontract import ner
from workers.engine import classifier_curves
from workers.engine import metrics as engine_metrics
from workers.engine.data import EntityText, LabeledText, read_rows, render_rows
from workers.engine.export import load_causal_lm
from workers.engine.loss_mask import IGNORE_INDEX, TemplateError, mask_conversation

# Generating is far slower than scoring: replies are compared on this many chat rows at most.
REFERENCE_ROWS = 8
# A classifier evaluated without prompts shows its answers on this many of the data's rows.
SAMPLE_ROWS = 5


def _scored(rows: list[Any], tokenizer: Any, context: int) -> Iterator[tuple[Any, Any]]:
    """(input_ids, labels) per row, scored as training scores it: a conversation on its
    assistant turns only (the SFT loss mask), plain text on every token."""
    import torch

    for row in rows:
        if isinstance(row, list) and tokenizer.chat_template:
            ids: list[int] | None
            try:
                ids, labels = mask_conversation(row, tokenizer, context)
            except TemplateError:
                ids = labels = None
            if ids is not None:
                yield torch.tensor([ids]), torch.tensor([labels])
                continue
        text = next(iter(render_rows([row], tokenizer)))
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :context]
        yield ids, ids


# An evaluation scores a dataset's held-out rows when it has them (a prepared version's split).
EVAL_SPLIT = "test"


def evaluate(
    model_dir: Path,
    data_file: Path,
    data_format: str,
    *,
    prompts: list[str],
    max_rows: int,
    max_new_tokens: int,
    progress: Callable[[float], None],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import torch

    torch.manual_seed(0)
    if is_token_classifier(model_dir):
        return evaluate_token_classifier(
            model_dir,
            data_file,
            data_format,
            prompts=prompts,
            max_rows=max_rows,
            progress=progress,
        )
    if is_classifier(model_dir):
        return evaluate_classifier(
            model_dir, data_file, data_format, prompts=prompts, max_rows=max_rows,
            progress=progress,
        )  # fmt: skip
    model, tokenizer = load_causal_lm(model_dir)
    rows = read_rows(data_file, data_format, prefer_split=EVAL_SPLIT)[:max_rows]
    context = int(
        getattr(model.config, "n_positions", None)
        or getattr(model.config, "max_position_embeddings", None)
        or 1024
    )
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for index, (ids, labels) in enumerate(_scored(rows, tokenizer, context)):
            scored = int((labels[:, 1:] != IGNORE_INDEX).sum())
            if scored == 0:
                continue
            loss = model(input_ids=ids, labels=labels).loss
            nll += float(loss) * scored
            tokens += scored
            progress(0.6 * (index + 1) / max(len(rows), 1))
    metrics: dict[str, float] = {
        "perplexity": engine_metrics.perplexity(nll, tokens),
        "eval_loss": nll / tokens if tokens else float("nan"),
        "eval_tokens": float(tokens),
        "eval_rows": float(len(rows)),
    }
    chats = [row for row in rows if isinstance(row, list) and row[-1]["role"] == "assistant"]
    if chats:
        hypotheses, references = [], []
        for row in chats[:REFERENCE_ROWS]:
            hypotheses.append(_generate(model, tokenizer, row[:-1], max_new_tokens, context))
            references.append(row[-1]["content"])
        # The same BLEU and ROUGE as training-time evaluation (one definition of each).
        scores = engine_metrics.generation_scores(hypotheses, references)
        metrics.update(scores)
        metrics["rouge_l"] = scores["rougeL"]
    progress(0.8)
    samples = [
        {"prompt": prompt, "output": _generate(model, tokenizer, prompt, max_new_tokens, context)}
        for prompt in prompts
    ]
    return metrics, samples


def _generate(
    model: Any,
    tokenizer: Any,
    prompt: str | list[dict[str, str]],
    max_new_tokens: int,
    context: int,
) -> str:
    """Greedy reply: chat-templated when the tokenizer has a template, stopping at its EOS ids.

    A prompt and its reply must fit the context (positions past it do not exist: IndexError).
    The web refuses a person's prompt that does not fit; a long dataset row keeps its end,
    the turns closest to the reply.
    """
    import torch

    room = context - max_new_tokens
    if room < 1:
        raise ValueError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
            f"context of {context} tokens"
        )

    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n".join(m["content"] for m in messages)
    ids = tokenizer(text, return_tensors="pt")
    if ids["input_ids"].shape[1] > room:
        ids = {key: value[:, -room:] for key, value in ids.items()}
    with torch.no_grad():
        out = model.generate(
            **ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


def is_classifier(model_dir: Path) -> bool:
    """A sequence classifier (what a classification run saves), by its config's architecture."""
    config = model_dir / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def evaluate_classifier(
    model_dir: Path,
    data_file: Path,
    data_format: str,
    *,
    prompts: list[str],
    max_rows: int,
    progress: Callable[[float], None],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Accuracy, macro and per-class precision/recall/F1 and the confusion matrix of a classifier
    on labelled rows (the training-time report), and its label for each prompt given, or for
    the first rows of the data when none are (never perplexity: a classifier has none).

    Rows whose label the model does not know count as wrong (predicted class vs a class of
    their own), so a dataset with new labels cannot look better than it is.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if data_format != "classification":
        raise ValueError(
            f"a classification model is evaluated on a classification dataset (text + label), "
            f"not on {data_format} rows"
        )
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    id2label = {int(i): str(label) for i, label in model.config.id2label.items()}
    names = [id2label[i] for i in sorted(id2label)]
    rows = [
        r
        for r in read_rows(data_file, data_format, prefer_split=EVAL_SPLIT)[:max_rows]
        if isinstance(r, LabeledText)
    ]
    unknown = sorted({r.label for r in rows} - set(names))
    labels = names + unknown
    index = {name: i for i, name in enumerate(labels)}

    context = int(getattr(model.config, "max_position_embeddings", 512))

    def probabilities(texts: list[str]) -> list[list[float]]:
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=context, return_tensors="pt"
        )
        with torch.no_grad():
            return [[float(p) for p in row] for row in model(**batch).logits.softmax(-1)]

    def predict(texts: list[str]) -> list[tuple[int, float]]:
        best = [max(enumerate(row), key=lambda item: item[1]) for row in probabilities(texts)]
        return [(i, p) for i, p in best]

    y_true: list[int] = []
    y_prob: list[list[float]] = []
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        y_prob += probabilities([r.text for r in chunk])
        y_true += [index[r.label] for r in chunk]
        progress(0.8 * min(1.0, (start + len(chunk)) / max(len(rows), 1)))
    y_pred = [max(range(len(p)), key=p.__getitem__) for p in y_prob]
    report = engine_metrics.classification_report(y_true, y_pred, labels)
    metrics: dict[str, Any] = engine_metrics.scalar_metrics(report)
    metrics["eval_rows"] = float(len(rows))
    metrics["per_class"] = report["per_class"]
    if rows:
        # ROC/PR with AUC, reliability and ECE, the threshold table: the summary numbers join
        # the metrics (so the gate and the comparison can use them), the curves go to the
        # evaluation's figures (the task stores them apart from the metrics).
        figures = classifier_curves.curves(y_true, y_prob, names)
        metrics.update(figures["summary"])
        metrics["figures"] = figures
    if prompts:
        samples = [
            {"prompt": prompt, "output": f"{names[i]} ({score:.2f})"}
            for prompt, (i, score) in zip(prompts, predict(prompts), strict=True)
        ]
    else:
        # No prompts of the caller's: samples are rows of the evaluated data itself (in its
        # language and domain), with the true label beside the predicted one.
        shown = rows[:SAMPLE_ROWS]
        samples = [
            {
                "prompt": row.text,
                "output": f"{names[i]} ({score:.2f})",
                "expected": row.label,
            }
            for row, (i, score) in zip(shown, predict([r.text for r in shown]) if shown else [],
                                       strict=True)
        ]  # fmt: skip
    return metrics, samples


def is_token_classifier(model_dir: Path) -> bool:
    """A token classifier (what a token_classification run saves), by its architecture."""
    config = model_dir / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(str(a).endswith("ForTokenClassification") for a in architectures)


def evaluate_token_classifier(
    model_dir: Path,
    data_file: Path,
    data_format: str,
    *,
    prompts: list[str],
    max_rows: int,
    progress: Callable[[float], None],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The training-time report of an entity model on entity rows: seqeval's entity-level
    P/R/F1 per type and micro/macro, token (word) accuracy and the type confusion matrix, with
    the entities it finds in each prompt given, or in the first rows of the data.

    Rows are read as serving reads them (each word at its first sub-word, token_classify),
    so the scores describe what /predict answers. An entity type the model does not know
    can never be found: it counts as missed.
    """
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from workers.engine.token_classify import predict_entities

    if data_format != "token_classification":
        raise ValueError(
            "an entity (token classification) model is evaluated on a token_classification "
            f"dataset (text + entities), not on {data_format} rows"
        )
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    context = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    context = min(context, int(getattr(model.config, "n_positions", context) or context))
    rows = [
        r
        for r in read_rows(data_file, data_format, prefer_split=EVAL_SPLIT)[:max_rows]
        if isinstance(r, EntityText)
    ]
    y_true: list[list[str]] = []
    y_pred: list[list[str]] = []
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        found = predict_entities(model, tokenizer, [r.text for r in chunk], context)
        for row, entities in zip(chunk, found, strict=True):
            # The predicted entities as tags over the same words (cut at the gold boundaries
            # and the predicted ones alike, so both read the same word sequence).
            cuts = [o for e in (*row.entity_dicts(), *entities) for o in (e["start"], e["end"])]
            words = ner.words(row.text, cuts)
            y_true.append(_tags_over(words, row.entity_dicts()))
            y_pred.append(_tags_over(words, entities))
        progress(0.8 * min(1.0, (start + len(chunk)) / max(len(rows), 1)))
    report = engine_metrics.token_classification_report(y_true, y_pred)
    metrics: dict[str, Any] = engine_metrics.scalar_metrics(report)
    metrics["eval_rows"] = float(len(rows))
    metrics["per_type"] = report["per_type"]
    # Per word, entity types with "O" last: rows true, columns predicted (the run page's view).
    metrics["confusion"] = {"labels": report["labels"], "matrix": report["confusion_matrix"]}
    shown_texts = prompts or [r.text for r in rows[:SAMPLE_ROWS]]
    shown = predict_entities(model, tokenizer, shown_texts, context) if shown_texts else []
    samples: list[dict[str, Any]] = []
    for i, (text, entities) in enumerate(zip(shown_texts, shown, strict=True)):
        sample = {"prompt": text, "output": _entity_line(text, entities)}
        if not prompts:
            sample["expected"] = _entity_line(text, rows[i].entity_dicts())
        samples.append(sample)
    return metrics, samples


def _tags_over(word_spans: list[tuple[int, int]], entities: list[dict[str, Any]]) -> list[str]:
    """BIO tags of words (already cut at every entity boundary) for these entities."""
    tags = [ner.OUTSIDE] * len(word_spans)
    for entity in entities:
        first = True
        for k, (start, end) in enumerate(word_spans):
            if start >= int(entity["start"]) and end <= int(entity["end"]):
                tags[k] = f"{'B' if first else 'I'}-{entity['label']}"
                first = False
    return tags


def _entity_line(text: str, entities: list[dict[str, Any]]) -> str:
    """Entities as a person reads them: "李明 PER, 北京大学 ORG" ("no entity" when none)."""
    if not entities:
        return "no entity"
    return ", ".join(f"{text[int(e['start']) : int(e['end'])]} {e['label']}" for e in entities)
