"""Native tool calling: the tool format a chat template speaks, and parsing its calls.

A model that was trained for tool use has a chat template that renders the
``tools`` variable (OpenAI-style function schemas) into the prompt and teaches
the model a syntax for calls. We recognise the common syntaxes from the
template's source:

* ``hermes`` - ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  (Hermes 2 Pro, Qwen 2.5/3 and our ``hermes`` preset);
* ``llama3`` - a bare JSON object ``{"name": ..., "parameters": {...}}``,
  optionally after ``<|python_tag|>`` (Llama 3.1+);
* ``mistral`` - ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}]``;
* ``json`` - any other template that renders ``tools``: a bare JSON object
  with ``name`` and ``arguments``.

A template that never mentions ``tools`` has no native format (None): callers
fall back to the constrained JSON protocol of the agent loop.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.core.errors import DemoAIError

__all__ = [
    "FORMATS",
    "ParsedCall",
    "ToolSpecError",
    "call_grammar_schema",
    "call_wrapping",
    "chosen_tools",
    "detect_tool_format",
    "messages_for_template",
    "parse_tool_calls",
    "validate_tools",
]

FORMATS = ("hermes", "llama3", "mistral", "json")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class ToolSpecError(DemoAIError):
    """A request's ``tools`` or ``tool_choice`` is malformed."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_tools"


@dataclass(frozen=True)
class ParsedCall:
    """One tool call found in a model's output."""

    name: str
    arguments: dict[str, Any]

    def to_openai(self, call_id: str | None = None) -> dict[str, Any]:
        return {
            "id": call_id or "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }


def _uses_tools(source: str) -> bool:
    try:
        tree = ImmutableSandboxedEnvironment().parse(source)
    except TemplateSyntaxError:
        return False
    return any(n.name == "tools" for n in tree.find_all(nodes.Name))


@functools.lru_cache(maxsize=32)
def detect_tool_format(source: str | None) -> str | None:
    """The tool-call syntax a chat template teaches, or None when it renders no tools."""
    if not source or not _uses_tools(source):
        return None
    if "<tool_call>" in source:
        return "hermes"
    if "[TOOL_CALLS]" in source:
        return "mistral"
    if "<|python_tag|>" in source or ("<|start_header_id|>" in source and '"parameters"' in source):
        return "llama3"
    return "json"


def validate_tools(tools: Any) -> list[dict[str, Any]]:
    """Check an OpenAI ``tools`` list; returns it normalised (``parameters`` always present)."""
    if not isinstance(tools, list) or not tools:
        raise ToolSpecError("tools must be a non-empty list.")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, Mapping) else None
        if not isinstance(t, Mapping) or t.get("type") != "function" or not isinstance(fn, Mapping):
            raise ToolSpecError(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}.')
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolSpecError(
                f"tools[{i}].function.name must be 1-64 letters, digits, '_' or '-'."
            )
        if name in seen:
            raise ToolSpecError(f"Two tools are named {name!r}.")
        seen.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, Mapping):
            raise ToolSpecError(f"tools[{i}].function.parameters must be a JSON schema object.")
        function = {
            "name": name,
            "description": str(fn.get("description") or ""),
            "parameters": dict(params),
        }
        out.append({"type": "function", "function": function})
    return out


def chosen_tools(tools: list[dict[str, Any]], choice: Any) -> tuple[list[dict[str, Any]], bool]:
    """Apply ``tool_choice``: (the tools the model may call, whether a call is required)."""
    if choice is None or choice == "auto":
        return tools, False
    if choice == "none":
        return [], False
    if choice == "required":
        return tools, True
    fn = choice.get("function") if isinstance(choice, Mapping) else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str):
        raise ToolSpecError(
            'tool_choice must be "auto", "none", "required" or '
            '{"type": "function", "function": {"name": ...}}.'
        )
    picked = [t for t in tools if t["function"]["name"] == name]
    if not picked:
        raise ToolSpecError(f"tool_choice names {name!r}, which is not in tools.")
    return picked, True


def messages_for_template(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as chat templates expect them: call arguments as objects, not strings."""
    out: list[dict[str, Any]] = []
    for m in messages:
        msg = dict(m)
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            fixed = []
            for c in calls:
                c = dict(c) if isinstance(c, Mapping) else {}
                fn = dict(c.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args) if args.strip() else {}
                    except ValueError:
                        raise ToolSpecError(
                            f"A tool call's arguments are not valid JSON: {args[:80]!r}."
                        ) from None
                c["function"] = fn
                # Some templates read name/arguments at the top level of a call.
                c.setdefault("name", fn.get("name"))
                c.setdefault("arguments", fn.get("arguments"))
                fixed.append(c)
            msg["tool_calls"] = fixed
        out.append(msg)
    return out


def _call_from(obj: Any, arg_keys: tuple[str, ...]) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    for key in arg_keys:
        if key in obj:
            args = obj[key]
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    return None
            return ParsedCall(obj["name"], args) if isinstance(args, dict) else None
    return ParsedCall(obj["name"], {}) if len(obj) == 1 else None


def _whole_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_tool_calls(text: str, fmt: str | None) -> tuple[str, list[ParsedCall]]:
    """Split a model's output into (text content, tool calls) for a tool format.

    Text that looks like a call but does not parse stays in the content, so
    nothing the model wrote is lost.
    """
    if fmt is None:
        return text, []
    if fmt == "hermes":
        calls: list[ParsedCall] = []
        kept: list[str] = []
        pos = 0
        for m in _HERMES.finditer(text):
            call = _call_from(_whole_json(m.group(1)), ("arguments", "parameters"))
            if call is None:
                continue
            calls.append(call)
            kept.append(text[pos : m.start()])
            pos = m.end()
        kept.append(text[pos:])
        return ("".join(kept).strip() if calls else text), calls
    stripped = text.strip()
    if fmt == "mistral":
        head, sep, rest = stripped.partition("[TOOL_CALLS]")
        if not sep:
            return text, []
        obj = _whole_json(rest.strip())
        items = obj if isinstance(obj, list) else [obj]
        calls = [c for c in (_call_from(o, ("arguments", "parameters")) for o in items) if c]
        return (head.strip(), calls) if calls and len(calls) == len(items) else (text, [])
    if fmt == "llama3":
        body = stripped.removeprefix("<|python_tag|>").strip()
        parts = [p for p in body.split(";") if p.strip()] if body.startswith("{") else []
        found = (_call_from(_whole_json(p), ("parameters", "arguments")) for p in parts)
        calls = [c for c in found if c]
        if parts and len(calls) == len(parts):
            return "", calls
        return text, []
    call = _call_from(_whole_json(stripped), ("arguments", "parameters"))
    return ("", [call]) if call else (text, [])


def call_grammar_schema(tools: Sequence[Mapping[str, Any]], fmt: str) -> dict[str, Any]:
    """A JSON schema matching exactly one call of one of ``tools`` in ``fmt``'s object shape."""
    key = "parameters" if fmt == "llama3" else "arguments"
    options = []
    for t in tools:
        fn = t["function"]
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, key: fn["parameters"]},
                "required": ["name", key],
            }
        )
    return options[0] if len(options) == 1 else {"oneOf": options}


def call_wrapping(fmt: str) -> tuple[str, str]:
    """Literal text before and after the JSON object of a required call."""
    return {
        "hermes": ("<tool_call>\n", "\n</tool_call>"),
        "mistral": ("[TOOL_CALLS][", "]"),
    }.get(fmt, ("", ""))
