"""Converters: a source record to a canonical row of its schema (docs/DATA_CONTRACT.md), or a
`RowError` saying in a few words why the row is refused (a missing field, a wrong role order,
an entity span out of range...). One function per record, no state: the ingest pass calls it
for every record and counts the refusals."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from typing import Any

import datacontract as contract
from app.core import safe_json
from app.services.datasets.readers import CONLL_LINES
from datacontract import ner

CHAT_ROLES = contract.CHAT_ROLES
_ROLE_ALIASES = {"developer": "system", "human": "user", "gpt": "assistant", "bot": "assistant"}


class RowError(Exception):
    """Why one record cannot become a canonical row (the ingest pass lists it as a problem)."""


def _text(value: Any, key: str, column: str, *, allow_empty: bool = False) -> str:
    where = f'"{key}"' if key == column else f'"{key}" (column "{column}")'
    if value is None:
        raise RowError(f"missing field: {where}")
    if not isinstance(value, str):
        raise RowError(f"{where} must be a string")
    text = value
    if not allow_empty and not text.strip():
        raise RowError(f"{where} is empty")
    return text


def _label(value: Any, column: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(f'label missing (column "{column}")')
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value).strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return str(value)
    raise RowError(f'the label (column "{column}") must be one value, not a list or object')


def _entity_row(
    record: dict[str, Any], mapping: dict[str, str], column: Callable[[str], str]
) -> dict[str, Any]:
    """A `token_classification` row from tokens + tags (BIO/BIOES, checked strictly) or from
    text + character spans (in range, not overlapping)."""
    try:
        if "tokens" in mapping:
            tokens, tags = record.get(mapping["tokens"]), record.get(mapping["tags"])
            for key, value in (("tokens", tokens), ("tags", tags)):
                if not isinstance(value, list) or not value:
                    raise RowError(f'"{column(key)}" must be a non-empty list of strings')
            assert isinstance(tags, list) and isinstance(tokens, list)
            if any(not isinstance(tag, str) for tag in tags):
                raise RowError(
                    f'"{column("tags")}" must hold tag strings such as B-PER, I-PER, O '
                    "(integer tag ids need their names)"
                )
            return ner.from_tokens(tokens, tags)
        text = _text(record.get(mapping["text"]), "text", column("text"))
        raw = record.get(mapping["entities"]) if "entities" in mapping else None
        if raw is None:
            raise RowError(f'missing field: "entities" (column "{column("entities")}")')
        if isinstance(raw, str):  # CSV/TSV cells hold the list as JSON
            try:
                raw = safe_json.loads(raw)
            except (json.JSONDecodeError, safe_json.JSONRefused):
                raise RowError('"entities" is not a JSON list') from None
        return {"text": text, "entities": ner.check_entities(text, raw)}
    except ner.TagError as exc:
        lines = record.get(CONLL_LINES)
        if isinstance(lines, list) and exc.index is not None and exc.index < len(lines):
            raise RowError(f"{exc} (line {lines[exc.index]})") from None
        raise RowError(str(exc)) from None


def check_messages(value: Any) -> list[dict[str, Any]]:
    """The chat rules (docs/datasets-ingest.md): known roles, system messages first, the first
    other message not from the assistant, tool messages only after an assistant turn, at least
    one user and one assistant message, string contents (an assistant message may carry
    tool_calls instead). Extra keys are kept; role aliases (developer, human, gpt) normalised."""
    if isinstance(value, str):
        try:
            value = safe_json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f'invalid JSON in "messages" ({exc.msg})') from None
        except safe_json.JSONRefused as exc:
            raise RowError(f'"messages" {exc}') from None
    if not isinstance(value, list) or not value:
        raise RowError('"messages" must be a non-empty list')
    out: list[dict[str, Any]] = []
    seen_other = False
    previous = ""
    for index, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise RowError(f"message {index} must be an object")
        message = dict(message)
        if "role" not in message and "from" in message:  # ShareGPT style
            message["role"] = message.pop("from")
            message.setdefault("content", message.pop("value", None))
        role = message.get("role")
        role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in CHAT_ROLES:
            raise RowError(
                f"message {index} has role {role!r}; expected one of " + ", ".join(CHAT_ROLES)
            )
        message["role"] = role
        content = message.get("content")
        if role == "assistant" and content is None and message.get("tool_calls"):
            message["content"] = ""
        elif not isinstance(content, str):
            raise RowError(f'message {index} needs a string "content"')
        elif not content.strip() and role in ("user", "assistant"):
            raise RowError(f"message {index} ({role}) has empty text")
        if role == "system" and seen_other:
            raise RowError(
                f"wrong role order: message {index} is a system message after the dialogue started"
            )
        if role != "system" and not seen_other:
            if role == "assistant" and index == 1:
                raise RowError("wrong role order: the first message is from the assistant")
            if role == "tool":
                raise RowError(
                    f"wrong role order: message {index} (tool) answers no assistant call"
                )
            seen_other = True
        if role == "tool" and previous not in ("assistant", "tool"):
            raise RowError(
                f"wrong role order: message {index} (tool) must follow an assistant message"
            )
        previous = role
        out.append(message)
    roles = {m["role"] for m in out}
    if "assistant" not in roles:
        raise RowError("a chat example needs at least one assistant message")
    if "user" not in roles:
        raise RowError("a chat example needs at least one user message")
    return out


_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_messages(text: str) -> list[dict[str, Any]] | None:
    """Anthropic HH's "\n\nHuman: …\n\nAssistant: …" transcript as messages (None: not one)."""
    parts = _HH_MARKER.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    return [
        {"role": _HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _message_list(value: Any, name: str, default_role: str) -> list[dict[str, Any]]:
    """A preference field as {"role", "content"} messages: a list of messages, OpenAI's
    {"messages": [...]} input, a JSON string of either (CSV cells), an HH transcript, or plain
    text (one `default_role` turn)."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            with contextlib.suppress(json.JSONDecodeError, safe_json.JSONRefused):
                value = safe_json.loads(stripped)
    if isinstance(value, str):
        hh = _hh_messages(value)
        if hh is not None:
            value = hh
        elif not value.strip():
            raise RowError(f'"{name}" is empty')
        else:
            return [{"role": default_role, "content": value}]
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        value = value["messages"]  # OpenAI's DPO input: {"messages": [...], "tools": ...}
    if isinstance(value, dict) and "role" in value:
        value = [value]
    if not isinstance(value, list) or not value:
        raise RowError(f'"{name}" must be text or a non-empty list of messages')
    out: list[dict[str, Any]] = []
    for index, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise RowError(f'"{name}" message {index} must be an object')
        role = message.get("role", message.get("from"))
        role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        content = message.get("content", message.get("value"))
        if role not in CHAT_ROLES:
            raise RowError(
                f'"{name}" message {index} has role {role!r}; expected one of '
                + ", ".join(CHAT_ROLES)
            )
        if not isinstance(content, str):
            raise RowError(f'"{name}" message {index} needs a string "content"')
        if not content.strip() and role in ("user", "assistant"):
            raise RowError(f'"{name}" message {index} ({role}) has empty text')
        out.append({"role": role, "content": content})
    return out


def _check_prompt(prompt: list[dict[str, Any]]) -> None:
    if not any(m["role"] == "user" for m in prompt):
        raise RowError("the prompt needs a user message")
    if prompt[-1]["role"] == "assistant":
        raise RowError("the prompt ends with an assistant turn: the answer to judge must follow it")
    seen_other = False
    for index, message in enumerate(prompt, start=1):
        if message["role"] == "system" and seen_other:
            raise RowError(
                f"wrong role order: prompt message {index} is a system message after the "
                "dialogue started"
            )
        seen_other = seen_other or message["role"] != "system"


def _check_answer(answer: list[dict[str, Any]], name: str) -> None:
    if any(m["role"] != "assistant" for m in answer):
        raise RowError(f'"{name}" must hold assistant turns only (the answer to the prompt)')


def _split_conversations(
    chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt, chosen answer, rejected answer) of two whole conversations (HH style): the
    prompt is the turns they share, up to the last one that is not the assistant's."""
    shared = 0
    while (
        shared < min(len(chosen), len(rejected))
        and chosen[shared]["role"] == rejected[shared]["role"]
        and chosen[shared]["content"] == rejected[shared]["content"]
    ):
        shared += 1
    while shared and chosen[shared - 1]["role"] == "assistant":
        shared -= 1
    if shared == 0:
        raise RowError(
            "without a prompt column, chosen and rejected must be whole conversations that "
            "start with the same user turn(s)"
        )
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _preference_row(prompt_raw: Any, chosen_raw: Any, rejected_raw: Any) -> dict[str, Any]:
    if chosen_raw is None or rejected_raw is None:
        missing = "chosen" if chosen_raw is None else "rejected"
        raise RowError(f'missing field: "{missing}"')
    chosen = _message_list(chosen_raw, "chosen", "assistant")
    rejected = _message_list(rejected_raw, "rejected", "assistant")
    if prompt_raw is None or (isinstance(prompt_raw, str) and not prompt_raw.strip()):
        if prompt_raw is not None and not (len(chosen) > 1 or len(rejected) > 1):
            raise RowError('"prompt" is empty')
        prompt, chosen, rejected = _split_conversations(chosen, rejected)
    else:
        prompt = _message_list(prompt_raw, "prompt", "user")
    _check_prompt(prompt)
    if not chosen or not rejected:
        raise RowError("chosen and rejected must each have an answer after the prompt")
    _check_answer(chosen, "chosen")
    _check_answer(rejected, "rejected")
    if chosen == rejected:
        raise RowError("chosen and rejected are the same answer: there is nothing to prefer")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


_BOOLEAN_WORDS = {
    "true": True,
    "false": False,
    "1": True,
    "0": False,
    "yes": True,
    "no": False,
    "desirable": True,
    "undesirable": False,
}


def kto_label(value: Any) -> bool | None:
    """A KTO label as a boolean (true/false, 1/0, yes/no, desirable/undesirable), else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[value.strip().lower()]
    return None


def _kto_row(prompt_raw: Any, completion_raw: Any, label_raw: Any) -> dict[str, Any]:
    for name, raw in (("prompt", prompt_raw), ("completion", completion_raw)):
        if raw is None:
            raise RowError(f'missing field: "{name}"')
    prompt = _message_list(prompt_raw, "prompt", "user")
    completion = _message_list(completion_raw, "completion", "assistant")
    _check_prompt(prompt)
    _check_answer(completion, "completion")
    label = kto_label(label_raw)
    if label is None:
        raise RowError(f"label must be true or false (is the answer desirable?), not {label_raw!r}")
    return {"prompt": prompt, "completion": completion, "label": label}


def make_converter(schema: str, mapping: dict[str, str]) -> Callable[[Any], dict[str, Any]]:
    """A function from a source record to a canonical row; raises RowError with a reason."""

    def column(key: str) -> str:
        # Detection may leave a required key unmapped (a file with only some of a schema's
        # columns): each row then names the missing field.
        return mapping.get(key, key)

    def get(record: dict[str, Any], key: str) -> Any:
        return record.get(mapping[key]) if key in mapping else None

    def convert(record: Any) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise RowError(f"each row must be a JSON object, not {type(record).__name__}")
        row: dict[str, Any]
        if schema == "preference":
            row = _preference_row(
                get(record, "prompt"), get(record, "chosen"), get(record, "rejected")
            )
        elif schema == "kto":
            row = _kto_row(get(record, "prompt"), get(record, "completion"), get(record, "label"))
        elif schema == "chat":
            if column("messages") not in record:
                raise RowError(f'missing field: "messages" (column "{column("messages")}")')
            row = {"messages": check_messages(record[column("messages")])}
        elif schema == "token_classification":
            row = _entity_row(record, mapping, column)
        elif schema == "classification":
            row = {
                "text": _text(get(record, "text"), "text", column("text")),
                "label": _label(get(record, "label"), column("label")),
            }
        elif schema == "instruction":
            raw_input = get(record, "input")
            row = {
                "instruction": _text(
                    get(record, "instruction"), "instruction", column("instruction")
                ),
                "input": ""
                if raw_input is None
                else _text(raw_input, "input", column("input"), allow_empty=True),
                "output": _text(get(record, "output"), "output", column("output")),
            }
        else:
            row = {key: _text(get(record, key), key, column(key)) for key in contract.KEYS[schema]}
        split = record.get("split")
        if split in ("train", "validation", "test"):
            row["split"] = split
        return row

    return convert
