"""Tool formats of chat templates: detection, rendering with tools, parsing calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.infer import Chunk, Engine, EngineOptions, SamplingParams, Usage, preset
from app.core.infer.tool_calls import (
    ParsedCall,
    ToolSpecError,
    call_grammar_schema,
    chosen_tools,
    detect_tool_format,
    messages_for_template,
    parse_tool_calls,
    validate_tools,
)

TOOLS = validate_tools(
    [
        {
            "type": "function",
            "function": {
                "name": "calc",
                "description": "Evaluate",
                "parameters": {
                    "type": "object",
                    "properties": {"expr": {"type": "string"}},
                    "required": ["expr"],
                },
            },
        },
        {"type": "function", "function": {"name": "now"}},
    ]
)
# Small templates in the style of each family (written for these tests).
LLAMA31_STYLE = (
    "{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}"
    'Respond with {"name": function name, "parameters": dictionary}.{% endif %}'
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
)
MISTRAL_STYLE = (
    "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
    "{% for m in messages %}{% if m['tool_calls'] %}[TOOL_CALLS]{{ m['tool_calls'] | tojson }}"
    "{% else %}[INST]{{ m['content'] }}[/INST]{% endif %}{% endfor %}"
)
GENERIC = "{{ tools | tojson }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


def test_detects_formats_from_template_source() -> None:
    assert detect_tool_format(preset("hermes").source) == "hermes"
    assert detect_tool_format(LLAMA31_STYLE) == "llama3"
    assert detect_tool_format(MISTRAL_STYLE) == "mistral"
    assert detect_tool_format(GENERIC) == "json"
    for name in ("chatml", "gemma", "llama3", "plain"):
        assert detect_tool_format(preset(name).source) is None, name
    # Mentioning <tool_call> in text without rendering tools is not tool support.
    assert detect_tool_format("say <tool_call>{{ messages[0]['content'] }}") is None
    assert detect_tool_format(None) is None and detect_tool_format("{% bad") is None


def test_hermes_preset_renders_tools_calls_and_results() -> None:
    t = preset("hermes")
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "calc", "arguments": '{"expr": "2+2"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ]  # fmt: skip
    text = t.render(messages_for_template(msgs), tools=TOOLS)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert json.dumps(TOOLS[0]) in text  # each schema as JSON inside <tools>
    assert '<tool_call>\n{"name": "calc", "arguments": {"expr": "2+2"}}\n</tool_call>' in text
    assert "<tool_response>\n4\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert text.count("Be brief.") == 1
    # Without tools it is exactly ChatML.
    plain = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert t.render(plain) == preset("chatml").render(plain)


@pytest.mark.parametrize(
    ("fmt", "text", "content", "calls"),
    [
        ("hermes", 'Sure.\n<tool_call>\n{"name": "calc", "arguments": {"expr": "1"}}\n</tool_call>',
         "Sure.", [ParsedCall("calc", {"expr": "1"})]),
        ("hermes", '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
                   '<tool_call>{"name": "b", "arguments": "{\\"x\\": 2}"}</tool_call>',
         "", [ParsedCall("a", {}), ParsedCall("b", {"x": 2})]),
        ("hermes", '<tool_call>{"name": "calc", "arguments": {"expr": "1"}}',  # cut at a stop
         "", [ParsedCall("calc", {"expr": "1"})]),
        ("hermes", "<tool_call>{not json}</tool_call>", "<tool_call>{not json}</tool_call>", []),
        ("llama3", '<|python_tag|>{"name": "calc", "parameters": {"expr": "1"}}',
         "", [ParsedCall("calc", {"expr": "1"})]),
        ("llama3", "The answer is {x}.", "The answer is {x}.", []),
        ("mistral", '[TOOL_CALLS] [{"name": "calc", "arguments": {"expr": "1"}}]',
         "", [ParsedCall("calc", {"expr": "1"})]),
        ("json", '{"name": "now", "arguments": {}}', "", [ParsedCall("now", {})]),
        ("json", "plain answer", "plain answer", []),
        (None, '<tool_call>{"name": "a", "arguments": {}}</tool_call>',
         '<tool_call>{"name": "a", "arguments": {}}</tool_call>', []),
    ],
)  # fmt: skip
def test_parse_tool_calls(
    fmt: str | None, text: str, content: str, calls: list[ParsedCall]
) -> None:
    assert parse_tool_calls(text, fmt) == (content, calls)


def test_validate_and_choose_tools() -> None:
    assert TOOLS[1]["function"]["parameters"] == {"type": "object", "properties": {}}
    for bad, msg in [
        ([], "non-empty"),
        ([{"type": "function"}], "must be"),
        ([{"type": "function", "function": {"name": "a b"}}], "letters"),
        ([{"type": "function", "function": {"name": "a"}}] * 2, "Two tools"),
        ([{"type": "function", "function": {"name": "a", "parameters": []}}], "schema"),
    ]:
        with pytest.raises(ToolSpecError, match=msg):
            validate_tools(bad)
    assert chosen_tools(TOOLS, None) == (TOOLS, False)
    assert chosen_tools(TOOLS, "none") == ([], False)
    assert chosen_tools(TOOLS, "required") == (TOOLS, True)
    assert chosen_tools(TOOLS, {"type": "function", "function": {"name": "now"}}) == (
        [TOOLS[1]],
        True,
    )
    with pytest.raises(ToolSpecError, match="not in tools"):
        chosen_tools(TOOLS, {"type": "function", "function": {"name": "x"}})
    with pytest.raises(ToolSpecError):
        chosen_tools(TOOLS, "sometimes")


def test_call_schema_and_bad_history() -> None:
    one = call_grammar_schema(TOOLS[:1], "hermes")
    assert one["properties"]["name"] == {"const": "calc"} and one["required"] == [
        "name",
        "arguments",
    ]
    both = call_grammar_schema(TOOLS, "llama3")
    assert [o["required"] for o in both["oneOf"]] == [["name", "parameters"]] * 2
    bad = [{"role": "assistant", "tool_calls": [{"function": {"name": "a", "arguments": "{x"}}]}]
    with pytest.raises(ToolSpecError, match="not valid JSON"):
        messages_for_template(bad)


class _PromptRecorder(Engine):
    """An engine whose "model" records the prompt it was given (Engine.chat is the code under test)."""

    def __init__(self) -> None:
        super().__init__(EngineOptions(template="hermes"))
        self.prompts: list[str] = []

    def load(self, path: Path) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def context_length(self) -> int:
        return 4096

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return list(text.encode())

    def complete(self, prompt: str, params: SamplingParams) -> Iterator[Chunk]:
        self.prompts.append(prompt)
        yield Chunk("", finish_reason="stop", usage=Usage(len(prompt), 0))


def test_engine_chat_renders_tools_and_call_history() -> None:
    engine = _PromptRecorder()
    assert engine.tool_format == "hermes"
    history = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "calc", "arguments": '{"expr": "2+2"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ]  # fmt: skip
    list(engine.chat(history, SamplingParams(max_tokens=1), tools=TOOLS))
    list(engine.chat(history, SamplingParams(max_tokens=1)))  # tool_choice "none": no tools
    with_tools, without = engine.prompts
    call = '{"name": "calc", "arguments": {"expr": "2+2"}}'  # arguments as an object
    assert call in with_tools and call in without
    assert "<tools>" in with_tools and "<tools>" not in without
