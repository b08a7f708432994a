"""Tool calls for chat completions: what the model is offered or forced to call, and the
tool calls read back from what it wrote.

The inference server renders `tools` through the model's chat template (or, for a template
without tools, describes them in the system message and asks for
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`). With tool_choice "required" or a
named function the answer is forced by a JSON schema grammar to be exactly one call
`{"name": ..., "arguments": ...}` whose arguments follow the function's parameters.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from app.openai.schemas import ChatCompletionCreate, NamedToolChoice

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_TAGGED = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.S)
ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ToolPlan:
    """How one request uses its tools: "off" (none given, or tool_choice none), "auto", or
    "forced" (required or named: `schema` is the grammar of the one call)."""

    mode: str = "off"
    tools: list[dict[str, Any]] = field(default_factory=list)
    names: frozenset[str] = frozenset()
    schema: dict[str, Any] | None = None
    parallel: bool = True

    @property
    def offered(self) -> list[dict[str, Any]] | None:
        """The tools the prompt shows the model (none when it may not call them)."""
        return self.tools if self.mode != "off" else None


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": function["name"]},
            "arguments": function.get("parameters") or ANY_OBJECT,
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def plan(body: ChatCompletionCreate) -> ToolPlan:
    if not body.tools or body.tool_choice == "none":
        return ToolPlan()
    functions = [tool.function.model_dump(exclude_none=True) for tool in body.tools]
    tools = [{"type": "function", "function": f} for f in functions]
    names = frozenset(f["name"] for f in functions)
    parallel = body.parallel_tool_calls is not False
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        chosen = next(f for f in functions if f["name"] == choice.function.name)
        return ToolPlan("forced", tools, names, _call_schema(chosen), parallel)
    if choice == "required":
        options = [_call_schema(f) for f in functions]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return ToolPlan("forced", tools, names, schema, parallel)
    return ToolPlan("auto", tools, names, None, parallel)


def new_call(name: str, arguments: Any) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": text},
    }


def _as_call(text: str, names: frozenset[str]) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    return new_call(str(value["name"]), arguments if arguments is not None else {})


def parse(text: str, plan: ToolPlan) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool calls) of an answer. A forced answer is the call itself; an auto one
    may hold tagged calls (or be one bare call object); text around them stays content."""
    if plan.mode == "off":
        return text, []
    if plan.mode == "forced":
        call = _as_call(text.strip(), plan.names)
        return (None, [call]) if call else (text, [])
    calls = []
    for match in _TAGGED.finditer(text):
        call = _as_call(match.group(1), plan.names)
        if call is not None:
            calls.append(call)
    if calls:
        content = _TAGGED.sub("", text).strip() or None
    else:
        bare = _as_call(text.strip(), plan.names)
        calls, content = ([bare], None) if bare else ([], text)
    if not plan.parallel:
        calls = calls[:1]
    return content, calls


def may_be_call(text: str) -> bool:
    """Whether a streamed answer's beginning may still turn out to be a tool call (so it is
    held back until it is known)."""
    start = text.lstrip()
    return not start or OPEN.startswith(start) or start.startswith((OPEN, "{"))


def chunk_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls as a stream delta's `tool_calls` (each with its index)."""
    return [{"index": i, **call} for i, call in enumerate(calls)]
