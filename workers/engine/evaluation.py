"""Evaluating a saved causal LM on rows of a dataset: perplexity, generation samples for a fixed
prompt set, and BLEU / ROUGE-L of generated replies against the reference for chat rows.

Perplexity counts the tokens training counts: a conversation's answers (the SFT mask), not its
prompts, so a fine-tuned version is not penalised for the prompts it was never trained on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from workers.engine import metrics as engine_metrics
from workers.engine.data import IGNORE_INDEX, read_rows, render_rows
from workers.engine.export import load_causal_lm
from workers.engine.sft import TemplateError, mask_conversation

# Generating is far slower than scoring: replies are compared on this many chat rows at most.
REFERENCE_ROWS = 8


def _scored(rows: list[Any], tokenizer: Any, context: int) -> Iterator[tuple[Any, Any]]:
    """(input_ids, labels) per row, scored as training scores it: a conversation on its
    assistant turns only (the SFT loss mask), plain text on every token."""
    import torch

    for row in rows:
        if isinstance(row, list) and tokenizer.chat_template:
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


def evaluate(
    model_dir: Path,
    data_file: Path,
    data_format: str,
    *,
    prompts: list[str],
    max_rows: int,
    max_new_tokens: int,
    progress: Callable[[float], None],
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    import torch

    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(model_dir)
    rows = read_rows(data_file, data_format)[:max_rows]
    context = int(
        getattr(model.config, "n_positions", None)
        or getattr(model.config, "max_position_embeddings", 1024)
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
            hypotheses.append(_generate(model, tokenizer, row[:-1], max_new_tokens))
            references.append(row[-1]["content"])
        # The same BLEU and ROUGE as training-time evaluation (one definition of each).
        scores = engine_metrics.generation_scores(hypotheses, references)
        metrics.update(scores)
        metrics["rouge_l"] = scores["rougeL"]
    progress(0.8)
    samples = [
        {"prompt": prompt, "output": _generate(model, tokenizer, prompt, max_new_tokens)}
        for prompt in prompts
    ]
    return metrics, samples


def _generate(model: Any, tokenizer: Any, prompt: str | list[dict], max_new_tokens: int) -> str:
    """Greedy reply: chat-templated when the tokenizer has a template, stopping at its EOS ids."""
    import torch

    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n".join(m["content"] for m in messages)
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
