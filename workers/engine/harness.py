"""Harness evaluations: canonical task rows (app/services/evaluation/harness_tasks.py) run as
lm-evaluation-harness tasks against a saved model, in this process, with lm_eval's own
prompting, metrics, aggregation and standard errors.

The model is lm_eval's `HFLM` around the version's own weights (loaded like every other
evaluation, so GGUF and LoRA versions work): log-likelihoods come from exactly the weights that
were registered, with no server, no quantisation and no HTTP between. (The other choice,
lm_eval's `local-completions` against our /v1, would measure a deployment — for a GGUF version
llama.cpp's quantised copy — and needs logprobs with echo from /v1.)

Multiple choice follows MMLU's template, the one lm_eval uses for MMLU, C-Eval and CMMLU:
the question, one line per choice `A. ...`, then `Answer:` (`答案：` when the questions are
mostly CJK), the letters scored as continuations (`acc`, `acc_norm`). Generation sends the
prompt as is, generates greedily until a newline (or `max_new_tokens`), and scores with
lm_eval's `exact_match` (after an optional `regex` extraction filter), `bleu` (corpus BLEU by
sacrebleu) and `rouge` (ROUGE-L F1 by rouge-score, per row, averaged).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
GENERATION_METRICS = ("exact_match", "bleu", "rouge")
# Bootstrap resamples for the standard errors of corpus-level metrics (BLEU); lm_eval's mean
# metrics (acc, exact_match, rouge) have a closed-form standard error and need none.
BOOTSTRAP_ITERS = 200
SAMPLE_ROWS = 5
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def mostly_cjk(texts: list[str]) -> bool:
    joined = "".join(texts)
    letters = sum(1 for ch in joined if ch.isalpha())
    return bool(letters) and len(_CJK.findall(joined)) / letters > 0.5


def mc_prompt(cue: str) -> Callable[[dict[str, Any]], str]:
    def doc_to_text(doc: dict[str, Any]) -> str:
        lines = [str(doc["question"]).strip()]
        lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(doc["choices"])]
        return "\n".join(lines) + f"\n{cue}"

    return doc_to_text


def mc_choices(doc: dict[str, Any]) -> list[str]:
    return list(LETTERS[: len(doc["choices"])])


def mc_target(doc: dict[str, Any]) -> int:
    return int(doc["answer"])


def gen_prompt(doc: dict[str, Any]) -> str:
    return str(doc["prompt"])


def gen_target(doc: dict[str, Any]) -> Any:
    answers = list(doc["answers"])
    return answers if len(answers) > 1 else answers[0]


def rouge(references: list[str], predictions: list[str]) -> float:
    """ROUGE-L F1 of one prediction (rouge-score, CJK read per character as in training)."""
    from workers.engine.metrics import generation_scores

    return float(generation_scores(predictions, references)["rougeL"])


def task_configs(
    rows: list[dict[str, Any]],
    *,
    task_type: str,
    num_fewshot: int,
    metrics: list[str],
    regex: str | None,
    max_new_tokens: int,
    max_rows: int,
) -> dict[str, dict[str, Any]]:
    """lm_eval task configs, one per subject, each with its rows as an in-memory dataset."""
    import datasets

    by_task: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], {"test": [], "dev": []})[row["split"]].append(row)
    configs: dict[str, dict[str, Any]] = {}
    for name, splits in by_task.items():
        if not splits["test"]:
            continue
        test = splits["test"][:max_rows]
        dev = splits["dev"]

        def make(
            test: list[dict[str, Any]] = test, dev: list[dict[str, Any]] = dev, **_: Any
        ) -> dict[str, Any]:
            made = {"test": datasets.Dataset.from_list(test)}
            if dev:
                made["dev"] = datasets.Dataset.from_list(dev)
            return made

        config: dict[str, Any] = {
            "task": name,
            "custom_dataset": make,
            "test_split": "test",
            "num_fewshot": num_fewshot,
            "metadata": {"version": 1},
        }
        if dev:
            config["fewshot_split"] = "dev"
        if task_type == "multiple_choice":
            cue = "答案：" if mostly_cjk([r["question"] for r in test[:50]]) else "Answer:"
            config.update(
                output_type="multiple_choice",
                doc_to_text=mc_prompt(cue),
                doc_to_choice=mc_choices,
                doc_to_target=mc_target,
                metric_list=[
                    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
                ],
            )
        else:
            metric_list: list[dict[str, Any]] = []
            for metric in metrics:
                if metric == "exact_match":
                    metric_list.append(
                        {
                            "metric": "exact_match",
                            "aggregation": "mean",
                            "higher_is_better": True,
                            "ignore_case": True,
                            "ignore_punctuation": False,
                        }
                    )
                elif metric == "bleu":
                    metric_list.append(
                        {"metric": "bleu", "aggregation": "bleu", "higher_is_better": True}
                    )
                elif metric == "rouge":
                    metric_list.append(
                        {"metric": rouge, "aggregation": "mean", "higher_is_better": True}
                    )
            config.update(
                output_type="generate_until",
                doc_to_text=gen_prompt,
                doc_to_target=gen_target,
                target_delimiter=" ",
                generation_kwargs={
                    "until": ["\n"],
                    "max_gen_toks": max_new_tokens,
                    "do_sample": False,
                },
                metric_list=metric_list,
            )
            if regex:
                config["filter_list"] = [
                    {
                        "name": "regex",
                        "filter": [
                            {"function": "regex", "regex_pattern": regex},
                            {"function": "take_first"},
                        ],
                    }
                ]
        configs[name] = config
    return configs


def _progress_lm(
    model: Any, tokenizer: Any, progress: Callable[[float], None], context: int
) -> Any:
    """lm_eval's HFLM that reports how many of its requests are answered, in chunks."""
    from lm_eval.models.huggingface import HFLM

    class ReportingHFLM(HFLM):  # type: ignore[misc]
        total = 1
        done = 0

        def _chunked(self, method: Callable[..., list[Any]], requests: list[Any]) -> list[Any]:
            out: list[Any] = []
            step = max(16, len(requests) // 20)
            for start in range(0, len(requests), step):
                out += method(requests[start : start + step], disable_tqdm=True)
                self.done += len(requests[start : start + step])
                progress(0.05 + 0.9 * min(1.0, self.done / max(self.total, 1)))
            return out

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            return self._chunked(super().loglikelihood, requests)

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            return self._chunked(super().generate_until, requests)

    return ReportingHFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, max_length=context)


def evaluate_harness(
    model_dir: Path,
    task_file: Path,
    *,
    task_type: str,
    num_fewshot: int,
    metrics: list[str],
    regex: str | None,
    max_new_tokens: int,
    max_rows: int,
    apply_chat_template: bool,
    progress: Callable[[float], None],
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(metrics, samples, figures) of a harness evaluation.

    metrics: the overall value of each metric and its standard error (`acc`, `acc_stderr`,
    ...; over several subjects the mean weighted by rows and the pooled standard error, as
    lm_eval aggregates a group), `harness_rows`, `harness_tasks`. figures["tasks"]: one entry
    per subject with every metric, its standard error and the rows evaluated.
    """
    import torch
    from lm_eval import evaluator
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr
    from lm_eval.api.task import ConfigurableTask

    from workers.engine.export import load_causal_lm

    torch.manual_seed(0)
    rows = [json.loads(line) for line in task_file.read_text(encoding="utf-8").splitlines()]
    configs = task_configs(
        rows,
        task_type=task_type,
        num_fewshot=num_fewshot,
        metrics=metrics,
        regex=regex,
        max_new_tokens=max_new_tokens,
        max_rows=max_rows,
    )
    model, tokenizer = load_causal_lm(model_dir)
    context = int(
        getattr(model.config, "n_positions", None)
        or getattr(model.config, "max_position_embeddings", None)
        or 2048
    )
    progress(0.05)
    tasks = {}
    for name, config in configs.items():
        task = ConfigurableTask(config=config)
        task.set_config(key="num_fewshot", value=num_fewshot)
        task.set_fewshot_seed(seed=1234)
        tasks[name] = task
    lm = _progress_lm(model, tokenizer, progress, context)
    choices = sum(len(r.get("choices", [])) or 1 for r in rows if r["split"] == "test")
    lm.total = max(1, choices)
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError("apply_chat_template: this model's tokenizer has no chat template")
    results = evaluator.evaluate(
        lm=lm,
        task_dict=tasks,
        bootstrap_iters=BOOTSTRAP_ITERS,
        log_samples=True,
        apply_chat_template=apply_chat_template,
        verbosity="WARNING",
    )
    assert results is not None
    per_task: list[dict[str, Any]] = []
    for name in sorted(tasks):
        result = results["results"][name]
        size = int(result.get("sample_len") or results["n-samples"][name]["effective"])
        values: dict[str, Any] = {}
        for key, value in result.items():
            if "," not in key or "_stderr" in key.split(",")[0]:
                continue
            metric, flt = key.split(",", 1)
            label = metric if flt in ("none", "regex") else f"{metric}_{flt}"
            stderr = result.get(f"{metric}_stderr,{flt}")
            values[label] = {
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, int | float) else None,
            }
        per_task.append({"task": name, "rows": size, "metrics": values})
    overall: dict[str, Any] = {}
    sizes = [t["rows"] for t in per_task]
    for label in per_task[0]["metrics"] if per_task else []:
        scores = [t["metrics"][label]["value"] for t in per_task]
        stderrs = [t["metrics"][label]["stderr"] for t in per_task]
        if len(per_task) == 1:
            value, stderr = scores[0], stderrs[0]
        else:
            value = aggregate_subtask_metrics(scores, sizes, weight_by_size=True)
            known = [s for s in stderrs if s is not None]
            stderr = pooled_sample_stderr(known, sizes) if len(known) == len(stderrs) else None
        overall[label] = float(value)
        if stderr is not None and math.isfinite(stderr):
            overall[f"{label}_stderr"] = float(stderr)
    overall["harness_rows"] = float(sum(sizes))
    overall["harness_tasks"] = float(len(per_task))
    samples: list[dict[str, Any]] = []
    for name in sorted(tasks):
        for logged in results["samples"][name][: max(0, SAMPLE_ROWS - len(samples))]:
            samples.append(_sample(logged, task_type))
    figures = {
        "task_type": task_type,
        "num_fewshot": num_fewshot,
        "tasks": per_task,
        "engine": "lm-evaluation-harness",
        "lm_eval_version": _lm_eval_version(),
    }
    progress(1.0)
    return overall, samples, figures


def _sample(logged: dict[str, Any], task_type: str) -> dict[str, Any]:
    """A logged lm_eval sample as the version page shows samples: prompt, answer, expected."""
    doc = logged["doc"]
    prompt = logged["arguments"][0][0] if logged.get("arguments") else ""
    if task_type == "multiple_choice":
        scores = [float(r[0]) for r in logged["filtered_resps"]]
        picked = max(range(len(scores)), key=scores.__getitem__)
        return {
            "prompt": str(prompt)[-600:],
            "output": LETTERS[picked],
            "expected": LETTERS[int(doc["answer"])],
        }
    response = logged["filtered_resps"]
    text = response[0] if isinstance(response, list) and response else response
    return {
        "prompt": str(prompt)[-600:],
        "output": str(text),
        "expected": " | ".join(doc["answers"]),
    }


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")
