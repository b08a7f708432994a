"""An Ollama Modelfile for an exported GGUF: the chat template in Ollama's Go-template form,
derived from the model's own Jinja template, and its stop tokens.

Ollama cannot run a Jinja template, so the Jinja one is read back by rendering it: each role's
turn is rendered with a marker as its content, which gives the text before and after the
content. The result (a `ChatFormat`) is checked by rendering a whole conversation both ways;
a template that does not decompose like that (one with conditions on turn position beyond a
default system prompt) gets a Modelfile without TEMPLATE and a comment that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
_MARK = "\u2063CONTENT\u2063"


@dataclass(frozen=True)
class ChatFormat:
    """Per role: the text before and after a message's content; then the generation prompt."""

    turns: dict[str, tuple[str, str]] = field(default_factory=dict)
    generation_prompt: str = ""
    default_system: str | None = None  # what the template says when no system message is given

    def render(self, messages: list[dict[str, str]]) -> str:
        """What the Go template below makes of a conversation (Ollama prepends the default
        system message itself when the conversation has none)."""
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        out = [
            self.turns[m["role"]][0] + m["content"] + self.turns[m["role"]][1]
            for m in messages
            if m["role"] in self.turns
        ]
        return "".join(out) + self.generation_prompt

    def go_template(self) -> str:
        """Ollama's TEMPLATE: one range over .Messages; no `{{-`, which would eat newlines."""
        shared = _shared_role_pattern(self.turns)
        if shared is not None:
            before, between, after = shared
            body = f"{before}{{{{ .Role }}}}{between}{{{{ .Content }}}}{after}"
        else:
            branches = [
                f'{"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
                f"{pre}{{{{ .Content }}}}{post}"
                for i, (role, (pre, post)) in enumerate(self.turns.items())
            ]
            body = "{{ " + "{{ ".join(branches) + "{{ end }}"
        return f"{{{{ range .Messages }}}}{body}{{{{ end }}}}{self.generation_prompt}"


def _shared_role_pattern(turns: dict[str, tuple[str, str]]) -> tuple[str, str, str] | None:
    """(before, between, after) when every role's turn is before+ROLE+between ... after."""
    first_role, (first_pre, first_post) = next(iter(turns.items()))
    if first_role not in first_pre:
        return None
    before, _, between = first_pre.partition(first_role)
    for role, (pre, post) in turns.items():
        if pre != f"{before}{role}{between}" or post != first_post:
            return None
    return before, between, first_post


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool = False) -> str:
    return str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    )


def chat_format(tokenizer: Any) -> ChatFormat | None:
    """The template as a ChatFormat, or None when it cannot be expressed as one."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    system = {"role": "system", "content": "S"}
    try:
        head = _render(tokenizer, [system])
    except Exception:
        return None
    turns: dict[str, tuple[str, str]] = {}
    for role in ROLES:
        try:
            text = _render(tokenizer, [system, {"role": role, "content": _MARK}])
        except Exception:  # a role the template refuses stays out of the Go template too
            continue
        if role == "system":
            text = _render(tokenizer, [{"role": "system", "content": _MARK}])
            piece = text
        elif text.startswith(head):
            piece = text[len(head) :]
        else:
            return None
        if piece == "" and role not in ("user", "assistant"):
            continue  # the template drops this role's messages: so does the Go template
        if piece.count(_MARK) != 1:
            return None
        before, after = piece.split(_MARK)
        turns[role] = (before, after)
    if "user" not in turns or "assistant" not in turns:
        return None
    user = [{"role": "user", "content": "U"}]
    try:
        generation = _render(tokenizer, user, True)[len(_render(tokenizer, user)) :]
        without_system = _render(tokenizer, user)
    except Exception:
        return None
    default_system = None
    plain_user = turns["user"][0] + "U" + turns["user"][1]
    if without_system != plain_user and "system" in turns:
        lead = without_system.removesuffix(plain_user)
        pre, post = turns["system"]
        if not (lead.startswith(pre) and lead.endswith(post)):
            return None
        default_system = lead[len(pre) : len(lead) - len(post)]
    found = ChatFormat(turns=turns, generation_prompt=generation, default_system=default_system)
    # The check: a whole conversation, with and without a system message, renders the same.
    for conversation in (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "hello!"},
            {"role": "user", "content": "what is 2 plus 2?"},
        ],
        [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}],
    ):
        try:
            expected = _render(tokenizer, conversation, True)
        except Exception:
            return None
        if found.render(conversation) != expected:
            return None
    if any('"""' in part or "{{" in part for part in _parts(found)):
        return None
    return found


def _parts(found: ChatFormat) -> list[str]:
    pieces = [p for pair in found.turns.values() for p in pair]
    return [*pieces, found.generation_prompt, found.default_system or ""]


def modelfile(gguf_name: str, tokenizer: Any, stops: list[str]) -> str:
    """The Modelfile beside the GGUF: `ollama create NAME -f Modelfile` in that folder."""
    lines = [
        "# Ollama: run `ollama create my-model -f Modelfile` in this folder, then",
        "# `ollama run my-model`. llama.cpp: `llama-cli -m " + gguf_name + "`.",
        f"FROM ./{gguf_name}",
    ]
    found = chat_format(tokenizer)
    if found is not None:
        lines.append(f'TEMPLATE """{found.go_template()}"""')
        if found.default_system is not None:
            lines.append(f'SYSTEM """{found.default_system}"""')
    elif getattr(tokenizer, "chat_template", None):
        lines.append(
            "# The chat template could not be turned into Ollama's Go form; the GGUF carries "
            "it as tokenizer.chat_template for llama.cpp."
        )
    for stop in stops:
        lines.append(f"PARAMETER stop {_quote(stop)}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
