"""Chat templates, rendered only in a sandboxed Jinja environment.

A model's chat template is code supplied by whoever made the file. We render it
in Jinja's ``ImmutableSandboxedEnvironment`` and, before rendering, refuse any
template that reaches for dunder attributes (``__class__``, ``__globals__``,
``__subclasses__``...), so a hostile template fails before anything runs.
Presets cover models that ship no template.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.core.errors import DemoAIError

__all__ = [
    "PRESETS",
    "ChatTemplate",
    "ChatTemplateError",
    "UnsafeTemplateError",
    "guess_preset",
    "preset",
]

Message = Mapping[str, Any]


class ChatTemplateError(DemoAIError):
    """A chat template failed to compile or render."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "chat_template_error"


class UnsafeTemplateError(ChatTemplateError):
    """A chat template tried to reach Python internals; nothing was run."""

    code = "unsafe_chat_template"


class _TemplateRaised(Exception):
    """``raise_exception(...)`` called by the template itself."""


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, failing loudly (not with a silent Undefined) on unsafe access."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} is unsafe"
        )


def _make_env() -> _StrictSandbox:
    env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _make_env()


def _check_ast(source: str) -> None:
    """Refuse templates that name private or dunder attributes anywhere, taken branch or not."""
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise ChatTemplateError(f"The chat template has a syntax error: {exc}.") from exc
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        name: object = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Name):
            name = node.name
        prefix = "__" if isinstance(node, nodes.Name) else "_"
        if isinstance(name, str) and name.startswith(prefix):
            raise UnsafeTemplateError(
                f"Refused an unsafe chat template: it accesses {name!r}.",
                "The model file may be malicious; use a preset template (--template) instead.",
            )


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template with the special tokens it may reference.

    ``stop`` lists strings that end an assistant turn (the template's end-of-turn
    marker), added to the request's stop strings when chatting.
    """

    source: str
    bos_token: str = ""
    eos_token: str = ""
    name: str = "model"
    stop: tuple[str, ...] = ()
    _compiled: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_ast(self.source)
        try:
            compiled = _ENV.from_string(self.source)
        except TemplateError as exc:
            raise ChatTemplateError(f"The chat template does not compile: {exc}.") from exc
        object.__setattr__(self, "_compiled", compiled)

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render ``messages`` (dicts with ``role`` and ``content``) to a prompt string."""
        msgs = [_normalise_message(m) for m in messages]
        context: dict[str, Any] = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **extra,
            "messages": msgs,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return str(self._compiled.render(**context))
        except SecurityError as exc:
            raise UnsafeTemplateError(
                f"Refused an unsafe chat template: {exc}.",
                "The model file may be malicious; use a preset template (--template) instead.",
            ) from exc
        except _TemplateRaised as exc:
            raise ChatTemplateError(f"The chat template refused the conversation: {exc}") from exc
        except (TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise ChatTemplateError(f"The chat template failed to render: {exc}.") from exc

    def with_tokens(self, bos_token: str, eos_token: str) -> ChatTemplate:
        """The same template with the model's special tokens."""
        return ChatTemplate(self.source, bos_token, eos_token, self.name, self.stop)


def _normalise_message(message: Message) -> dict[str, Any]:
    if not isinstance(message, Mapping) or "role" not in message:
        raise ChatTemplateError("Each message needs a 'role' and a 'content'.")
    out = dict(message)
    content = out.get("content")
    if content is None:
        out["content"] = ""
    elif isinstance(content, list):
        # OpenAI content parts: keep the text parts.
        out["content"] = "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text"
        )
    elif not isinstance(content, str):
        raise ChatTemplateError("A message's content must be text.")
    return out


_CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Gemma has no system role: a system message is folded into the first user turn.
_GEMMA = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = ns.system + m['content'] + '\\n\\n' %}"
    "{% else %}"
    "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\\n' + ns.system + m['content'] + '<end_of_turn>\\n' }}"
    "{% set ns.system = '' %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
_LLAMA3 = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# ChatML with tools in the Hermes function-calling format (as used by Hermes 2 Pro
# and Qwen 2.5): tool schemas in a <tools> block of the system turn, calls as
# <tool_call>JSON</tool_call>, results as <tool_response> in a user turn.
# Without tools it renders exactly like chatml.
_HERMES = (
    "{% set ns = namespace(first=0) %}"
    "{% if tools %}"
    "{{ '<|im_start|>system\\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\\n\\n' }}{% set ns.first = 1 %}{% endif %}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.'"
    " + ' You are provided with function signatures within <tools></tools> XML tags:'"
    " + '\\n<tools>' }}"
    "{% for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a JSON object with the function'"
    " + ' name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'"
    ' + \'{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>\''
    " + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for m in messages[ns.first:] %}"
    "{% if m['role'] == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + m['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{% elif m['role'] == 'assistant' and m['tool_calls'] %}"
    "{{ '<|im_start|>assistant\\n' + m['content'] }}"
    "{% for c in m['tool_calls'] %}"
    "{{ '<tool_call>\\n' + ({'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson) + '\\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_PLAIN = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ 'Assistant: ' + m['content'] + '\\n\\n' }}"
    "{% else %}{{ 'User: ' + m['content'] + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

#: Preset name -> (template source, default bos, default eos, stop strings).
PRESETS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "chatml": (_CHATML, "", "<|im_end|>", ("<|im_end|>",)),
    "hermes": (_HERMES, "", "<|im_end|>", ("<|im_end|>",)),
    "gemma": (_GEMMA, "<bos>", "<eos>", ("<end_of_turn>",)),
    "llama3": (_LLAMA3, "<|begin_of_text|>", "<|eot_id|>", ("<|eot_id|>",)),
    "plain": (_PLAIN, "", "", ("\nUser:",)),
}


#: (label, preset name or None for the model's own) as offered in the panes.
TEMPLATE_CHOICES: list[tuple[str, str | None]] = [
    ("Model's own (or a preset guessed from the architecture)", None),
    ("ChatML", "chatml"),
    ("ChatML with tools (Hermes format)", "hermes"),
    ("Gemma", "gemma"),
    ("Llama 3", "llama3"),
    ("Plain (User:/Assistant:)", "plain"),
]


def preset(
    name: str, *, bos_token: str | None = None, eos_token: str | None = None
) -> ChatTemplate:
    """A preset template by name (``chatml``, ``hermes``, ``gemma``, ``llama3``, ``plain``)."""
    try:
        source, bos, eos, stop = PRESETS[name]
    except KeyError:
        raise ChatTemplateError(
            f"Unknown chat template preset {name!r}.",
            f"Choose one of: {', '.join(sorted(PRESETS))}.",
        ) from None
    return ChatTemplate(
        source,
        bos if bos_token is None else bos_token,
        eos if eos_token is None else eos_token,
        name=name,
        stop=stop,
    )


def guess_preset(architecture: str | None) -> str:
    """A sensible preset for a model without a template, from its architecture name."""
    arch = (architecture or "").lower()
    if arch.startswith("gemma"):
        return "gemma"
    if arch.startswith(("qwen", "internlm", "yi")):
        return "chatml"
    return "plain"
