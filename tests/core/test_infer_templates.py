"""Chat templates: presets, model templates, and refusal of template injection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.core.errors import DemoAIError
from app.core.infer import (
    PRESETS,
    ChatTemplate,
    ChatTemplateError,
    UnsafeTemplateError,
    preset,
)
from app.core.infer.templates import RENDER_SECONDS

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Capital of France?"},
]


def test_presets_render() -> None:
    gemma = preset("gemma").render(MESSAGES)
    assert gemma.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n")
    assert "<start_of_turn>model\nHello!<end_of_turn>\n" in gemma
    assert gemma.endswith("<start_of_turn>model\n")
    chatml = preset("chatml").render(MESSAGES, add_generation_prompt=False)
    assert chatml.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert not chatml.endswith("<|im_start|>assistant\n")
    llama3 = preset("llama3").render(MESSAGES)
    assert llama3.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    )
    assert llama3.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    plain = preset("plain").render(MESSAGES)
    assert (
        plain
        == "Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Capital of France?\n\nAssistant:"
    )
    assert preset("gemma").stop == ("<end_of_turn>",)
    with pytest.raises(ChatTemplateError, match="Unknown chat template preset"):
        preset("nope")


def test_hf_style_template_with_helpers() -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}"
        "<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
        "{{ '' if strftime_now('%Y') | length == 4 else 'BAD' }}{{ {'a': 'é'} | tojson }}"
    )
    t = ChatTemplate(source, "<s>", "</s>")
    out = t.render(MESSAGES[1:2])
    assert out == '<s><|user|>Hi</s><|assistant|>{"a": "é"}'
    with pytest.raises(ChatTemplateError, match="bad role"):
        t.render([{"role": "tool", "content": "x"}])


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''['__class__'] }}",
        "{% if false %}{{ cycler.__init__.__globals__.os.system('touch PWNED') }}{% endif %}",
        "{{ self._TemplateReference__context }}",
        "{{ __builtins__ }}",
    ],
)
def test_injection_is_refused_before_running(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeTemplateError, match="unsafe chat template") as info:
        ChatTemplate(source).render(MESSAGES)
    assert isinstance(info.value, DemoAIError)
    assert not (tmp_path / "PWNED").exists()


def test_sandbox_blocks_at_runtime_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even past the static check, the sandbox refuses unsafe calls (here: mutating a list)."""
    monkeypatch.chdir(tmp_path)
    t = ChatTemplate("{% set x = [] %}{{ x.append(1) }}")
    with pytest.raises(UnsafeTemplateError):
        t.render(MESSAGES)
    getter = ChatTemplate("{{ messages | attr('__class__') }}")
    with pytest.raises(UnsafeTemplateError):
        getter.render(MESSAGES)


def test_bad_templates_and_messages() -> None:
    with pytest.raises(ChatTemplateError, match="syntax"):
        ChatTemplate("{% for %}")
    with pytest.raises(ChatTemplateError, match="role"):
        preset("chatml").render([{"content": "x"}])
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert "ab" in preset("chatml").render(parts)


# --------------------------------------------------------------------------- budget

# Google's Gemma 3 chat template (as shipped in its tokenizer_config.json).
GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

HOSTILE = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested list loops": "{% set xs = [1] * 100000 %}{% for i in xs %}{% for j in xs %}{% endfor %}{% endfor %}",
    "3 GB string": "{{ 'A' * 3000000000 }}",
    "list repeat": "{{ ([1] * 100000) * 100000 }}",
    "str.center": "{{ 'x'.center(3000000000) }}",
    "center filter": "{{ 'x' | center(3000000000) }}",
    "printf width": "{{ '%999999999d' % 1 }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "replace blow-up": "{{ ('a' * 1000000) | replace('', 'b' * 1000) }}",
    "indent blow-up": "{{ ('\\n' * 1000000) | indent(1000) }}",
    "integer power": "{{ 9 ** (9 ** 9) }}",
    "concat doubling": (
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}"
    ),
    "captured output": (
        "{% set big = 'x' * 60000000 %}{% set s %}{% for i in range(100) %}{{ big }}"
        "{% endfor %}{% endset %}{{ s | length }}"
    ),
    "endless recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "exponential recursion": (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}"
    ),
    "batch fill": "{{ [1] | batch(3000000000, 'x') | list }}",
}


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
def test_budget_stops_hostile_templates(source: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(UnsafeTemplateError, match="budget") as info:
        ChatTemplate(source).render(MESSAGES)
    assert time.monotonic() - t0 < RENDER_SECONDS + 1.0
    assert info.value.code == "unsafe_chat_template" and info.value.hint


def test_budget_changes_nothing_for_real_templates() -> None:
    """The budgeted environment renders exactly what a plain sandbox renders."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    plain = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    conversation = [MESSAGES[0], *MESSAGES[1:3] * 3, MESSAGES[3]]
    for source, bos in [(GEMMA3, "<bos>"), *((v[0], v[1]) for v in PRESETS.values())]:
        expected = plain.from_string(source).render(
            messages=conversation, bos_token=bos, eos_token="<eos>", add_generation_prompt=True
        )
        assert ChatTemplate(source, bos, "<eos>").render(conversation) == expected
    # Loops of a reasonable size are fine.
    grid = "{% for i in range(300) %}{% for j in range(300) %}.{% endfor %}{% endfor %}"
    assert len(ChatTemplate(grid).render(MESSAGES)) == 90_000


def test_constant_folding_runs_nothing_while_compiling() -> None:
    t0 = time.monotonic()
    t = ChatTemplate(
        "{% if false %}{{ 'x' | center(3000000000) }}{{ 'y' * 4000000000 }}{% endif %}ok"
    )
    assert t.render(MESSAGES) == "ok"
    assert time.monotonic() - t0 < 1.0


def test_isolated_render_matches_and_bounds_what_the_budget_cannot_see() -> None:
    real = ChatTemplate(GEMMA3, "<bos>", "<eos>")
    assert real.render_isolated(MESSAGES[1:]) == real.render(MESSAGES[1:])
    with pytest.raises(ChatTemplateError, match="alternate"):
        real.render_isolated(MESSAGES[1:2] * 2)
    # Tiny in memory, 2**60 items once printed: one C-level call no hook can interrupt.
    nested = ChatTemplate(
        "{% set ns = namespace(x=[1]) %}{% for i in range(60) %}"
        "{% set ns.x = [ns.x, ns.x] %}{% endfor %}{{ ns.x }}"
    )
    t0 = time.monotonic()
    with pytest.raises(UnsafeTemplateError, match="budget"):
        nested.render_isolated(MESSAGES)
    assert time.monotonic() - t0 < RENDER_SECONDS + 2.0
    with pytest.raises(UnsafeTemplateError, match="budget"):
        ChatTemplate(HOSTILE["3 GB string"]).render_isolated(MESSAGES)
    # The killed worker is replaced.
    assert real.render_isolated(MESSAGES[1:]) == real.render(MESSAGES[1:])
    # Our presets never need a worker.
    assert preset("chatml").render_isolated(MESSAGES) == preset("chatml").render(MESSAGES)
