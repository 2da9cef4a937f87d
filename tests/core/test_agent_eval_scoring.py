"""Agent eval scoring pieces: task cells, call matching, accuracy, checks, scratch copies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.core.agents import AgentSpec, ToolGrant
from app.core.agents.builtin_tools import ToolContext, builtin_tool
from app.core.agents.runs import Step
from app.core.agents.tools import ToolRegistry
from app.core.errors import ConfigError
from app.core.eval.agent_eval import (
    AgentEvalConfig,
    Call,
    Checker,
    ExpectedCall,
    calls_of,
    parse_checker,
    parse_expected,
    run_checks,
    scratch_spec,
    split_subject,
    subject_id,
    tool_accuracy,
)


def _call(tool: str, valid: bool = True, **args: object) -> Call:
    return Call(tool, dict(args), known=True, valid=valid, refused=False)


def test_parse_expected() -> None:
    assert parse_expected(None) is None and parse_expected("  ") is None
    assert parse_expected("[]") == []
    got = parse_expected('[{"name": "calculator", "arguments": "{\\"expression\\": \\"1\\"}"}]')
    assert got == [ExpectedCall("calculator", {"expression": "1"})]
    assert parse_expected({"name": "read_file"}) == [ExpectedCall("read_file", {})]
    for bad in ("not json", '{"arguments": {}}', '[{"name": "x", "arguments": [1]}]', "3"):
        with pytest.raises(ValueError):
            parse_expected(bad)


def test_parse_checker() -> None:
    assert parse_checker("") is None
    assert parse_checker(r"\b42\b") == Checker(regex=r"\b42\b")
    assert parse_checker('{"file": "out.txt", "content": "^hi"}') == Checker(None, "out.txt", "^hi")
    for bad in ("(", '{"content": "x"}', '{"file": ""}', '{"other": 1}', '{"regex": "["}'):
        with pytest.raises(ValueError):
            parse_checker(bad)


def test_tool_accuracy_with_and_without_expected_calls() -> None:
    exp = [ExpectedCall("calculator", {"expression": "6*7"})]
    assert tool_accuracy([_call("calculator", expression="6*7", extra=1)], exp) == 1.0
    # each expected call is matched once: a repeat is an extra call
    twice = [_call("calculator", expression="6*7"), _call("calculator", expression="6*7")]
    assert tool_accuracy(twice, exp) == 0.5
    assert tool_accuracy([_call("calculator", False, expression="6*7")], exp) == 0.0  # invalid
    assert tool_accuracy([_call("calculator", expression="7*6")], exp) == 0.0
    assert tool_accuracy([], exp) == 0.0 and tool_accuracy([], []) == 1.0
    assert tool_accuracy([], None) is None
    assert tool_accuracy([_call("a"), _call("b", False)], None) == 0.5


def test_calls_of_checks_existence_and_schema() -> None:
    tools = ToolRegistry([builtin_tool("calculator", ToolContext())])

    def step(tool: str, **args: object) -> Step:
        return Step("s", "r", None, "tool_result", "", tool=tool, arguments=dict(args))

    calls = calls_of(
        [step("calculator", expression="1"), step("calculator", expression=1),
         step("calculator", expression="1", x=2), step("nope", a=1)],
        tools,
    )  # fmt: skip
    assert [(c.known, c.valid) for c in calls] == [
        (True, True), (True, False), (True, False), (False, False),
    ]  # fmt: skip


def test_checks_and_file_checker_stay_inside_the_folder(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text("hello world", encoding="utf-8")
    (tmp_path.parent / "secret.txt").write_text("hello", encoding="utf-8")
    ok = run_checks("It is 42.", "42", Checker(regex="4\\d"), None, [], tmp_path)
    assert ok == {"reference": True, "regex": True}
    assert run_checks(None, "42", None, None, [], tmp_path) == {"reference": False}
    f = run_checks("x", None, Checker(file="out.txt", content="^hello"), None, [], tmp_path)
    assert f == {"file": True}
    assert run_checks("x", None, Checker(file="../secret.txt"), None, [], tmp_path) == {
        "file": False
    }
    assert run_checks("x", None, Checker(file="out.txt"), None, [], None) == {"file": False}


def test_scratch_copy_keeps_links_as_links_and_skips_fifos(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a", encoding="utf-8")
    (tmp_path / "outside.txt").write_text("secret", encoding="utf-8")
    (src / "link").symlink_to(tmp_path / "outside.txt")
    os.mkfifo(src / "fifo")
    spec = AgentSpec(
        name="x", tools=(ToolGrant("read_file", str(src)), ToolGrant("write_file", str(src)))
    )
    new, copies = scratch_spec(spec, tmp_path / "scratch")
    copy = copies[str(src)]
    assert [g.folder for g in new.tools] == [str(copy), str(copy)]
    assert (copy / "a.txt").read_text(encoding="utf-8") == "a"
    assert (copy / "link").is_symlink() and not (copy / "fifo").exists()
    read = builtin_tool("read_file", ToolContext(folder=copy))
    with pytest.raises(Exception, match="outside the granted folder"):
        read.fn({"path": "link"})


def test_config_and_subject_ids() -> None:
    assert split_subject(subject_id("calc", 3, "m-1:x")) == ("calc", 3, "m-1:x")
    with pytest.raises(ConfigError):
        AgentEvalConfig(agents=["bad name"], dataset="d", input_column="i")
    with pytest.raises(ConfigError):
        AgentEvalConfig(agents=["a"], dataset="d", input_column="i", model_refs=["m"],
                        base_url="http://127.0.0.1:1/v1")  # fmt: skip
    with pytest.raises(ConfigError, match="Unknown agent eval settings"):
        AgentEvalConfig.from_dict({"agents": ["a"], "dataset": "d", "input_column": "i", "x": 1})
