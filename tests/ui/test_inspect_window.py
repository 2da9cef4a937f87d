"""Models › Inspect: tree, statistics, comparison and heatmap, all computed off the UI thread."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def tuned_dir(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    """The tiny Llama with one tensor nudged (a stand-in for a fine-tune)."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "tiny-tuned"
    shutil.copytree(tiny_llama_dir, out)
    w = load_file(str(tiny_llama_dir / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    w[name] = w[name] + np.random.default_rng(3).normal(0, 0.002, w[name].shape).astype(np.float32)
    save_file(w, str(out / "model.safetensors"))
    return out


def test_inspect_window_stats_compare_heatmap_and_export(
    qtbot, main_window, tiny_llama_dir, tuned_dir, tmp_path, ui_watchdog
) -> None:
    from safetensors.numpy import load_file

    from app.core.models.registry import ModelRegistry

    reg = ModelRegistry(main_window.services.workspace)
    base = reg.import_path(tiny_llama_dir, copy=False, name="tiny")
    tuned = reg.import_path(tuned_dir, copy=False, name="tiny-tuned")
    pane = main_window.pane("models")
    pane.refresh()
    pane.select_model(base.id)
    assert pane.inspect_btn.isEnabled()

    with ui_watchdog.watch():
        win = pane.inspect_selected()
        qtbot.waitUntil(lambda: win.tree.topLevelItemCount() == 2, timeout=30_000)
        assert "21 tensors" in win.summary.text()
        assert [win.tree.topLevelItem(i).text(0) for i in range(2)] == ["lm_head", "model"]
        assert not win.tabs.isTabVisible(1)  # no statistics before they are asked for

        win.compute_stats()
        qtbot.waitUntil(lambda: win.stats_table.rowCount() == 21, timeout=60_000)
        qtbot.waitUntil(lambda: win.stats_btn.isEnabled(), timeout=10_000)
        assert "Statistics of 21 tensors" in win.status.text

        win.compare_picker.select(tuned.id)
        win.compare_with(tuned.id)
        qtbot.waitUntil(lambda: win.compare_table.rowCount() == 21, timeout=60_000)
        g = win.show_heatmap("compare", "rel_change")
    ui_watchdog.assert_no_stall()

    # the table shows what numpy says
    weights = load_file(str(tiny_llama_dir / "model.safetensors"))
    by_name = {
        win.stats_table.item(r, 0).text(): win.stats_table.item(r, 5).value
        for r in range(win.stats_table.rowCount())
    }
    for name, x in weights.items():
        assert by_name[name] == pytest.approx(np.linalg.norm(x.astype(np.float64)), rel=1e-6)

    # the heatmap: 2 layers x 9 module types; only the nudged tensor changed
    assert g is not None and g.layers == [0, 1] and len(g.types) == 9
    up = g.types.index("model.layers.*.mlp.up_proj.weight")
    assert g.values[up][1] > 0.01 and g.values[up][0] == 0.0
    assert sum(v for row in g.values for v in row) == pytest.approx(g.values[up][1])

    l2 = win.show_heatmap("stats", "l2")
    q = l2.types.index("model.layers.*.self_attn.q_proj.weight")
    assert l2.values[q][0] == pytest.approx(
        np.linalg.norm(weights["model.layers.0.self_attn.q_proj.weight"].astype(np.float64)),
        rel=1e-6,
    )
    png = win.export_png(tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    rows = list(csv.reader((win.export_csv(tmp_path / "heat.csv")).open()))
    assert rows[0] == ["module", "0", "1"] and len(rows) == 10
    assert float(rows[1 + q][1]) == pytest.approx(l2.values[q][0])

    # a model made from another one proposes it for comparison
    reg.add_lineage(tuned.id, base.id, "fine-tuned-from")
    pane.select_model(tuned.id)
    other = pane.inspect_selected()
    assert other.compare_picker.current_id() == base.id
    other.close()

    if os.environ.get("DEMOAI_SCREENSHOT_DIR"):  # for looking at it by eye
        win.tabs.setCurrentIndex(4)
        qtbot.wait(200)
        win.grab().save(str(Path(os.environ["DEMOAI_SCREENSHOT_DIR"]) / "inspect.png"))
    win.close()


def test_prompt_tab_runs_a_job_and_shows_answer_lens_and_attention(
    qtbot, main_window, tiny_llama_dir, ui_watchdog
) -> None:
    import sys

    from PySide6.QtCore import QUrl
    from PySide6.QtWidgets import QToolTip

    from app.core.models.registry import ModelRegistry

    torch_before = "torch" in sys.modules
    rec = ModelRegistry(main_window.services.workspace).import_path(
        tiny_llama_dir, copy=False, name="tiny"
    )
    pane = main_window.pane("models")
    pane.refresh()
    pane.select_model(rec.id)
    with ui_watchdog.watch():
        win = pane.inspect_selected()
        qtbot.waitUntil(lambda: win.tree.topLevelItemCount() == 2, timeout=30_000)
        win.tabs.setCurrentIndex(win.tabs.count() - 1)
        win.max_tokens.setValue(4)
        job = win.run_prompt("Hello world")
        assert job is not None and not win.run_btn.isEnabled()
        qtbot.waitUntil(lambda: win.probe is not None, timeout=180_000)
        m = win.show_attention()
    ui_watchdog.assert_no_stall()
    # the model was loaded by the job's worker process, never by the window
    assert torch_before or "torch" not in sys.modules

    probe = win.probe
    assert len(probe["answer"]) == 4 and win.run_btn.isEnabled()
    n = len(probe["positions"])
    assert win.lens_table.rowCount() == 2 and win.lens_table.columnCount() == n
    assert [win.lens_table.item(1, c).text() for c in range(n)] == [
        repr(c["text"])[1:-1] for c in probe["lens"]["output"]
    ]
    assert m is not None and m.shape == (n, n)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-2)  # float16 on disk
    assert win.attention is not None and win.attention.shape == (2, 4, n, n)
    win.att_layer.setValue(1)
    win.att_head.setValue(3)
    np.testing.assert_array_equal(win.show_attention(), win.attention[1, 3].astype(np.float32))
    html = win.answer_view.toHtml()
    assert "tok:3" in html and "Hello world" in html
    win._token_hovered(QUrl("tok:0"))
    first = probe["answer"][0]
    assert f"{first['prob']:.3f}" in QToolTip.text()
    win.close()


def test_adapter_statistics_show_the_lora_updates(
    qtbot, main_window, tiny_llama_dir, tmp_path, ui_watchdog
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from app.core.models.registry import ModelRegistry

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        str(tiny_llama_dir), use_safetensors=True, local_files_only=True
    )
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    adapter_dir = tmp_path / "adapter"
    get_peft_model(model, cfg).save_pretrained(str(adapter_dir), safe_serialization=True)
    rec = ModelRegistry(main_window.services.workspace).import_path(adapter_dir, name="tiny-lora")
    pane = main_window.pane("models")
    pane.refresh()
    pane.select_model(rec.id)
    with ui_watchdog.watch():
        win = pane.inspect_selected()
        qtbot.waitUntil(lambda: win.tree.topLevelItemCount() > 0, timeout=30_000)
        win.compute_stats()
        qtbot.waitUntil(lambda: win.lora_table.rowCount() == 4, timeout=60_000)
        g = win.show_heatmap("lora", "norm")
    ui_watchdog.assert_no_stall()
    assert win.tabs.isTabVisible(3)
    norms = sorted(win.lora_table.item(r, 3).value for r in range(4))
    assert g is not None and g.layers == [0, 1] and len(g.types) == 2
    assert sorted(v for row in g.values for v in row) == pytest.approx(norms)
    assert all(win.lora_table.item(r, 2).value == 2.0 for r in range(4))  # alpha 8 / r 4
    win.close()
