"""The Datasets pane's Generate… dialog: self-instruct with the real Gemma GGUF, a new version."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from app.core.data.store import DatasetStore
from app.core.models.registry import ModelRegistry
from app.ui.panes.datasets.qt_datasets_pane import GenerateDialog

SEEDS = [
    ("Write a haiku about autumn leaves.", "Red leaves drift and fall."),
    ("Give three tips for staying focused while studying.", "1. Remove distractions."),
    ("Translate good morning into French.", "Bonjour."),
    ("Summarize the plot of Romeo and Juliet in one sentence.", "Two lovers die."),
    ("List five fruits that are high in vitamin C.", "Orange, kiwi, guava, lemon, papaya."),
    ("Explain what a prime number is to a child.", "A number only 1 and itself divide."),
]


def test_generate_dialog_self_instruct(
    qtbot, main_window, workspace, gemma_gguf: Path, monkeypatch
):
    model = ModelRegistry(workspace).import_path(gemma_gguf, copy=False)
    table = pa.table(
        {"instruction": [s[0] for s in SEEDS], "input": [""] * 6, "output": [s[1] for s in SEEDS]}
    )
    v = DatasetStore(workspace).create_dataset("seeds", table)
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=v.dataset_id)
    pane.open_dataset(v.dataset_id)
    qtbot.waitUntil(lambda: pane.model is not None and pane.model.rowCount() == 6, timeout=10_000)
    assert pane.editor.generate_btn.isEnabled() and pane.versions.count() == 1
    seen: list[GenerateDialog] = []

    def fake_exec(dlg: GenerateDialog) -> int:
        seen.append(dlg)
        assert dlg.model.currentData() == model.id
        assert dlg.instruction_col.currentData() == "instruction"
        assert dlg.output_col.currentData() == "output"
        dlg.mode.setCurrentIndex(dlg.mode.findData("self_instruct"))
        dlg.count.setValue(2)
        dlg.seed.setValue(5)
        dlg.max_tokens.setValue(24)
        dlg.ok_btn.click()
        return int(dlg.result())

    monkeypatch.setattr(GenerateDialog, "exec", fake_exec)
    jobs_before = set(pane._jobs)
    pane.editor.generate_btn.click()
    assert seen and seen[0].chosen[0] == "data.self_instruct"
    assert seen[0].chosen[1]["n_new"] == 2 and seen[0].chosen[1]["seed"] == 5
    assert len(pane._jobs - jobs_before) == 1
    qtbot.waitUntil(lambda: pane.versions.count() == 2, timeout=300_000)
    current = DatasetStore(workspace).get(v.dataset_id)
    newest = DatasetStore(workspace).version(v.dataset_id)
    assert current.current_version == newest.hash and newest.operation["name"] == "self_instruct"
    assert newest.rows > 6 and pane.model.rowCount() == newest.rows
    assert "self-instruct" in pane.versions.item(0).text()


def test_generate_dialog_paraphrase_prompt_from_library(qtbot, main_window, workspace) -> None:
    from app.core.agents.prompts import PromptStore

    prompts = PromptStore(workspace.db)
    prompts.save("ticket-rewrite", "Rewrite this ticket in other words: {{text}}\nRewritten:")
    prompts.save("needs-two", "{{text}} for {{audience}}")  # not offered: two variables
    v = DatasetStore(workspace).create_dataset("t", pa.table({"instruction": ["a", "b"]}))
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=v.dataset_id)
    pane.open_dataset(v.dataset_id)
    ModelRegistry(workspace)  # no model: the dialog still builds
    dlg = GenerateDialog(pane)
    dlg.mode.setCurrentIndex(dlg.mode.findData("augment"))
    assert dlg.prompt_text.isEnabled()
    labels = [dlg.prompt_pick.itemText(i) for i in range(dlg.prompt_pick.count())]
    assert labels == ["Built-in few-shot paraphrase prompt", "Library: ticket-rewrite v1"]
    dlg.prompt_pick.setCurrentIndex(1)
    assert dlg.prompt_text.toPlainText().startswith("Rewrite this ticket")
    dlg.model.addItem("m", "some-model")  # job_spec needs a model id
    dlg.model.setCurrentIndex(dlg.model.count() - 1)
    kind, params = dlg.job_spec()
    assert kind == "data.augment" and params["prompt_template"].endswith("Rewritten:")
    dlg.prompt_text.setPlainText("no placeholder")
    dlg.accept()
    assert "{{text}}" in dlg.error.text()
    dlg.mode.setCurrentIndex(dlg.mode.findData("self_instruct"))
    assert not dlg.prompt_text.isEnabled()
