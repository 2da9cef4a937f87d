"""Sampling parameters and stop-string buffering."""

from __future__ import annotations

import pytest

from app.core.errors import ConfigError
from app.core.infer import SamplingParams, StopBuffer


def test_from_openai_maps_fields() -> None:
    p = SamplingParams.from_openai(
        {
            "temperature": 0,
            "top_p": 0.5,
            "max_tokens": 12,
            "seed": 4,
            "stop": "\n",
            "top_k": 5,
            "repeat_penalty": 1.1,
        }
    )
    assert (p.temperature, p.top_p, p.max_tokens, p.seed, p.stop, p.top_k, p.repeat_penalty) == (
        0.0, 0.5, 12, 4, ("\n",), 5, 1.1,
    )  # fmt: skip
    assert (
        SamplingParams.from_openai({"max_completion_tokens": 3, "stop": ["a", "b"]}).max_tokens == 3
    )
    assert SamplingParams.from_openai({}).max_tokens == 256
    assert SamplingParams().with_stop(("x", "x")).stop == ("x",)


@pytest.mark.parametrize(
    "body",
    [
        {"temperature": -1},
        {"temperature": "hot"},
        {"top_p": 0},
        {"max_tokens": 0},
        {"seed": -3},
        {"n": 2},
        {"stop": 5},
        {"stop": [""]},
        {"top_k": True},
    ],
)
def test_invalid_requests(body: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SamplingParams.from_openai(body)


def test_stop_buffer_holds_partial_matches() -> None:
    buf = StopBuffer(("<end>",))
    assert buf.feed("Hello <e") == ("Hello ", False)
    assert buf.feed("nd") == ("", False)
    assert buf.feed("> more") == ("", True)
    buf = StopBuffer(("<end>",))
    assert buf.feed("a <e") == ("a ", False)
    assert buf.feed("x") == ("<ex", False)
    assert buf.flush() == ""
    assert StopBuffer(()).feed("abc") == ("abc", False)


def test_importing_infer_is_light() -> None:
    """The window process may import these: no torch, transformers, peft or llama_cpp."""
    import subprocess
    import sys

    code = (
        "import sys, app.core.infer, app.workers.host, app.workers.host_client; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'llama_cpp') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
