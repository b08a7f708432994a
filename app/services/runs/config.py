"""A run's hyperparameters: validated once here, with ranges a person can act on.

The engine's TrainConfig checks the same ranges again (it is used without the web too);
tests/engine/test_catalog_matches_engine.py keeps the choices below equal to the engine's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import datacontract as contract

DEFAULT_LEARNING_RATE = 5e-4
TASK_TYPES = ("auto", *contract.TASK_TYPES)
PREFERENCE_TASKS = contract.PREFERENCE_TASKS
DPO_LOSSES = ("sigmoid", "ipo")
# Each preference method's beta when none is given: TRL's defaults (SimPO's paper uses 2.0).
DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "kto": 0.1, "simpo": 2.0}
# The knobs only some methods read (a knob set for a method that ignores it is refused).
METHOD_KNOBS: dict[str, tuple[str, ...]] = {
    "beta": PREFERENCE_TASKS,
    "dpo_loss": ("dpo",),
    "simpo_gamma": ("simpo",),
    "kto_desirable_weight": ("kto",),
    "kto_undesirable_weight": ("kto",),
    "label_alignment": ("token_classification",),
}
SCHEDULERS = ("constant", "linear", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
METHODS = ("full", "lora", "qlora")
MAX_DEVICES = 64  # the engine's MAX_DEVICES
MAX_NODES = 64
# The task a dataset schema trains by default, and the schemas each task reads: the data
# contract's (datacontract, docs/DATA_CONTRACT.md), which the engine reads too.
DEFAULT_TASK = contract.DEFAULT_TASK
TASK_SCHEMAS = contract.TASK_SCHEMAS


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_type: Literal[
        "auto",
        "causal_lm",
        "sft",
        "classification",
        "seq2seq",
        "token_classification",
        "dpo",
        "orpo",
        "simpo",
        "kto",
    ] = "auto"
    method: Literal["full", "lora", "qlora"] = "full"
    learning_rate: float = Field(DEFAULT_LEARNING_RATE, gt=0, le=1.0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int | None = Field(None, ge=0, le=1_000_000)  # overrides warmup_ratio
    warmup_ratio: float = Field(0.05, ge=0, le=0.5)
    batch_size: int = Field(8, ge=1, le=512)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    epochs: float = Field(1.0, gt=0, le=1000)
    max_steps: int | None = Field(None, ge=1, le=1_000_000)
    weight_decay: float = Field(0.01, ge=0, le=1)
    max_grad_norm: float = Field(1.0, ge=0, le=1000)  # 0: no clipping
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    eval_split: float = Field(0.1, ge=0, le=0.5)
    eval_steps: int | None = Field(None, ge=1, le=1_000_000)
    save_steps: int | None = Field(None, ge=1, le=1_000_000)
    seed: int = Field(42, ge=0, le=2**31 - 1)
    block_size: int = Field(128, ge=16, le=8192)  # the training sequence length
    # Data-parallel processes on one machine (GPUs on a GPU worker); above 1: torchrun.
    devices: int = Field(1, ge=1, le=MAX_DEVICES)
    # Machines the run spans (docs/fleet.md): each runs `devices` processes; above 1, one
    # Celery task per node joins a c10d rendezvous and the queue starts all nodes or none.
    nodes: int = Field(1, ge=1, le=MAX_NODES)
    # Steps between training logs; None: every step on the CPU, every 10 on a GPU (a log
    # reads the loss back from the GPU, a synchronisation the other steps avoid).
    logging_steps: int | None = Field(None, ge=1, le=100_000)
    lora_r: int = Field(8, ge=1, le=512)
    lora_alpha: int = Field(16, ge=1, le=4096)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    # token_classification only: a word's label on its first sub-word, or on all of them
    # (the later ones as I-X); None: "first". Refused for the other tasks (METHOD_KNOBS).
    label_alignment: Literal["first", "all"] | None = None
    # Early stopping on an evaluation metric (needs an eval set): off unless patience is set.
    early_stopping_patience: int | None = Field(None, ge=1, le=1000)
    early_stopping_metric: str = Field("eval_loss", pattern=r"^[a-z][a-z0-9_]{0,63}$")
    early_stopping_mode: Literal["min", "max"] = "min"
    # Checkpoint retention: keep the newest N and the best by a metric; None keeps all.
    keep_last_checkpoints: int | None = Field(None, ge=1, le=1000)
    keep_best_metric: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,63}$")
    keep_best_mode: Literal["min", "max"] = "min"
    # Preference tuning (task dpo, orpo, simpo, kto; docs/preference.md). None: the method's
    # default (DEFAULT_BETA). beta scales the implicit reward (DPO, KTO, SimPO) or weighs the
    # odds-ratio term (ORPO, TRL's beta = the paper's lambda).
    beta: float | None = Field(None, gt=0, le=100)
    dpo_loss: Literal["sigmoid", "ipo"] = "sigmoid"
    simpo_gamma: float = Field(0.5, ge=0, le=100)  # SimPO's target reward margin (gamma/beta)
    kto_desirable_weight: float = Field(1.0, gt=0, le=100)
    kto_undesirable_weight: float = Field(1.0, gt=0, le=100)
    # Logit distillation (causal_lm and sft runs): the teacher is a base model name or a
    # registered version's serving name sharing the student's tokenizer (a scratch student
    # takes the teacher's). None: no teacher.
    teacher: str | None = Field(None, min_length=1, max_length=255)
    distill_temperature: float = Field(2.0, gt=0, le=20)
    distill_weight: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: object) -> object:
        """JSON `true`/`false` would pass as 1/0 for a number (pydantic's lax mode): refuse it
        by name, so `"max_grad_norm": false` is a mistake reported, not clipping turned off."""
        if isinstance(data, dict):
            for name, value in data.items():
                if isinstance(value, bool) and name in cls.model_fields:
                    raise ValueError(f"{name} must be a number or a choice, not {value!r}".lower())
        return data

    @model_validator(mode="after")
    def _warmup_within_steps(self) -> RunConfig:
        if self.max_steps and self.warmup_steps and self.warmup_steps > self.max_steps:
            raise ValueError("warm-up steps cannot exceed max steps")
        return self

    def knob_problems(self, task: str) -> list[tuple[str, str]]:
        """(field, message) for each method knob set away from its default for a task that
        does not read it: a parameter is used or refused, never silently dropped."""
        defaults = RunConfig.model_fields
        problems = []
        for name, tasks in METHOD_KNOBS.items():
            if task not in tasks and getattr(self, name) != defaults[name].default:
                problems.append(
                    (name, f"{name} applies to {' or '.join(tasks)} runs, not to a {task} run")
                )
        if self.teacher is not None and task not in ("causal_lm", "sft"):
            problems.append(
                ("teacher", f"logit distillation trains causal_lm or sft runs, not {task}")
            )
        for name in ("distill_temperature", "distill_weight"):
            if self.teacher is None and getattr(self, name) != defaults[name].default:
                problems.append((name, f"{name} needs a teacher"))
        if task == "kto" and self.batch_size < 2:
            problems.append(
                (
                    "batch_size",
                    "a kto run needs batch_size 2 or more (its KL term "
                    "compares answers within a batch)",
                )
            )
        return problems

    def beta_for(self, task: str) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(task, 0.1)

    def task_for(self, schema: str) -> str:
        """The task a run of this config trains on a dataset of `schema`."""
        if self.task_type != "auto":
            return self.task_type
        return DEFAULT_TASK.get(schema, "causal_lm")
