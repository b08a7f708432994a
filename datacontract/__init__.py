"""The dataset contract's names, spelled once (docs/DATA_CONTRACT.md): the schemas of canonical
rows, their keys, the splits, chat roles and which tasks each schema feeds.

Plain data with no imports: the web (`app/`), the workers and the training engine all read
it, and the engine still imports nothing from `app/`.
"""

from __future__ import annotations

from collections.abc import Mapping

# The canonical row schemas, in the order forms and messages list them.
SCHEMAS: tuple[str, ...] = (
    "text",
    "prompt_completion",
    "chat",
    "instruction",
    "classification",
    "seq2seq",
    "preference",
    "kto",
    "token_classification",
)
# The plain-text format of datasets uploaded before versions existed (one document per
# paragraph): still readable by the engine, prepared into `text` rows.
LEGACY_TXT = "txt"

# Each schema's keys in the order a row is written.
KEYS: Mapping[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "chat": ("messages",),
    "instruction": ("instruction", "input", "output"),
    "classification": ("text", "label"),
    "seq2seq": ("source", "target"),
    # Preference rows are conversations, as TRL reads them: `prompt` the shared turns (ending
    # with the user's), `chosen`/`rejected` (`completion` for KTO) the assistant turns after it.
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    # Character spans into the text, end exclusive: [{"start", "end", "label"}] (datacontract.ner).
    "token_classification": ("text", "entities"),
}
# Keys of a schema whose value is a list of {"role", "content"} messages (the text is in
# each message's "content").
MESSAGE_KEYS: Mapping[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion"),
}
# Keys a row may lack at upload (stored as ""), per schema.
# A preference file without a prompt holds whole conversations (Anthropic HH style): the
# prompt is the turns both share.
OPTIONAL_KEYS: Mapping[str, frozenset[str]] = {
    "instruction": frozenset({"input"}),
    "preference": frozenset({"prompt"}),
}
# Flat string keys a cleaning step may change (never a label or a role); `chat` rows carry
# their text in every message's "content".
TEXT_KEYS: Mapping[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "input", "output"),
    "classification": ("text",),
    "seq2seq": ("source", "target"),
    "chat": (),
    "preference": (),
    "kto": (),
    # Entities are character offsets into the text: a step that changed the text would move
    # them, so no cleaning step touches these rows' text.
    "token_classification": (),
}

SPLITS: tuple[str, ...] = ("train", "validation", "test")
CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

# Preference tuning (TRL): DPO (sigmoid or IPO loss), ORPO, SimPO (TRL's CPO with its simpo
# loss) and KTO (unpaired good/bad answers).
PREFERENCE_TASKS: tuple[str, ...] = ("dpo", "orpo", "simpo", "kto")
TASK_TYPES: tuple[str, ...] = (
    "causal_lm",
    "sft",
    "classification",
    "seq2seq",
    "token_classification",
    *PREFERENCE_TASKS,
)
# The task each schema trains by default (a run's task_type "auto"), and the schemas each
# task can read.
DEFAULT_TASK: Mapping[str, str] = {
    "text": "causal_lm",
    LEGACY_TXT: "causal_lm",
    "chat": "sft",
    "prompt_completion": "sft",
    "instruction": "sft",
    "classification": "classification",
    "seq2seq": "seq2seq",
    "preference": "dpo",
    "kto": "kto",
    "token_classification": "token_classification",
}
TASK_SCHEMAS: Mapping[str, tuple[str, ...]] = {
    "causal_lm": ("text", LEGACY_TXT, "chat", "prompt_completion", "instruction"),
    "sft": ("chat", "prompt_completion", "instruction"),
    "classification": ("classification",),
    "seq2seq": ("seq2seq",),
    "dpo": ("preference",),
    "orpo": ("preference",),
    "simpo": ("preference",),
    # A pair is two KTO examples (its chosen answer desirable, its rejected one not).
    "kto": ("kto", "preference"),
    "token_classification": ("token_classification",),
}
