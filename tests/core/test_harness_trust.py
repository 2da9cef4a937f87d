"""A harness task file is code: what is pinned when the user says yes, and checked in the job."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.errors import ConfigError
from app.core.eval.harness import (
    check_code,
    is_packaged_task,
    lm_eval_tasks_dir,
    task_code_files,
)


def test_the_task_its_includes_and_helpers_are_pinned_and_checked(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "base.yaml").write_text("output_type: multiple_choice\n")
    (shared / "common.py").write_text("def f(doc):\n    return doc\n")
    task = tmp_path / "task"
    task.mkdir()
    (task / "utils.py").write_text("def process_docs(ds):\n    return ds\n")
    (task / "t.yaml").write_text(
        "include: ../shared/base.yaml\ntask: t\nprocess_docs: !function utils.process_docs\n"
    )
    files = task_code_files(task / "t.yaml")
    assert set(files) == {
        str((task / "t.yaml").resolve()),
        str((task / "utils.py").resolve()),
        str((shared / "base.yaml").resolve()),
        str((shared / "common.py").resolve()),
    }
    check_code(files)  # unchanged: fine
    (task / "utils.py").write_text("import os\nos.system('echo changed')\n")
    with pytest.raises(ConfigError, match="changed or went away after the run was approved"):
        check_code(files)
    assert not is_packaged_task(task / "t.yaml")


def test_tasks_of_the_installed_lm_eval_need_no_approval() -> None:
    root = lm_eval_tasks_dir()
    if root is None:
        pytest.skip("lm-eval is not installed (the harness extra)")
    some = next(root.rglob("*.yaml"))
    assert is_packaged_task(some)
