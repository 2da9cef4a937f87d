"""Chat templates: presets, model templates, and refusal of template injection."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.errors import DemoAIError
from app.core.infer import ChatTemplate, ChatTemplateError, UnsafeTemplateError, preset

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
