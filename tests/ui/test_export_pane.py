"""The Export pane: real GGUF and package export jobs, history with verification, Docker state."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest

from app.core.jobs.store import FINAL_STATES, JobState
from tests.support.ci import needs_converter


def _pane(qtbot: Any, main_window: Any) -> Any:
    from app.ui.panes.export.qt_export_pane import ExportPane

    pane = ExportPane(main_window.services)
    qtbot.addWidget(pane)
    return pane


def _import_tiny(main_window: Any, tiny_llama_dir: Path) -> Any:
    from app.core.models.registry import ModelRegistry

    reg = ModelRegistry(main_window.services.workspace)
    return reg.import_hf_folder(tiny_llama_dir, copy=False, name="tiny")


def _run(qtbot: Any, pane: Any, timeout: int) -> Any:
    job = pane.start_export()
    assert job is not None and pane.job is not None
    assert pane.cancel_btn.isEnabled() and not pane.start_btn.isEnabled()
    qtbot.waitUntil(lambda: pane.job.state in FINAL_STATES, timeout=timeout)
    return pane.job


@needs_converter
def test_gguf_export_from_the_pane_verifies_and_registers(
    qtbot: Any,
    main_window: Any,
    tiny_llama_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.core.export.checksums import check_sums
    from app.core.models.registry import ModelRegistry

    base = _import_tiny(main_window, tiny_llama_dir)
    pane = _pane(qtbot, main_window)
    assert pane.history.rowCount() == 0 and "No exports yet" in pane.history_empty.text()
    pane.set_target("gguf")
    pane.refresh_models()
    assert pane.select_model(base.id)
    pane.set_quants(["F16", "Q8_0"])
    assert pane.chosen_quants() == ["F16", "Q8_0"]
    progress_seen: list[int] = []
    pane.progress.valueChanged.connect(progress_seen.append)

    job = _run(qtbot, pane, 150_000)
    assert job.state == JobState.SUCCEEDED, (job.error, job.hint)
    assert progress_seen and max(progress_seen) == 1000
    assert "done" in pane.status.text()

    recs = {r.quant: r for r in pane.records() if r.job_id == job.id}
    assert set(recs) == {"F16", "Q8_0"}
    for row in range(pane.history.rowCount()):
        assert pane.history.item(row, 6).text() == "verified: passed"
    f16_row = next(
        i for i in range(pane.history.rowCount()) if "F16" in pane.history.item(i, 1).text()
    )
    assert pane.history.item(f16_row, 4).text() == "100.0%"
    assert recs["F16"].verification is not None
    assert recs["F16"].verification["top1_agreement"] == 1.0
    assert recs["Q8_0"].verification is not None and recs["Q8_0"].verification["passed"]

    # the GGUFs are in the library with lineage, and offered for Docker bundles
    reg = ModelRegistry(main_window.services.workspace)
    for quant, relation in (("F16", "converted-from"), ("Q8_0", "quantized-from")):
        rec = recs[quant]
        assert rec.result_model_id is not None
        model = reg.get(rec.result_model_id)
        assert model.format == "gguf"
        parents = {(e.model_id, e.relation) for e in reg.lineage(model.id).parents}
        assert (base.id, relation) in parents
    pane.set_target("docker")
    offered = {pane.model_combo.itemData(i) for i in range(pane.model_combo.count())}
    assert offered == {recs["F16"].result_model_id, recs["Q8_0"].result_model_id}

    # a Docker bundle of the Q8_0 (written, not built)
    pane.set_target("docker")
    assert pane.select_model(recs["Q8_0"].result_model_id or "")
    pane.build_image.setChecked(False)
    pane.out_dir.setText(str(tmp_path / "bundles"))
    bundle_job = _run(qtbot, pane, 120_000)
    assert bundle_job.state == JobState.SUCCEEDED, (bundle_job.error, bundle_job.hint)
    bundle = pane.records()[0]
    assert bundle.kind == "docker" and bundle.state == "succeeded" and bundle.path
    assert pane.history.item(0, 1).text() == "Docker bundle"
    assert pane.history.item(0, 6).text() == "done"
    check_sums(Path(bundle.path))
    assert pane.folder_of(bundle) == Path(bundle.path)

    # details and open folder
    pane.refresh_history()
    assert pane.select_export(recs["F16"].id)
    assert "Verification passed" in pane.details.toPlainText()
    opened: list[str] = []
    monkeypatch.setattr(
        "app.ui.qt_open.QDesktopServices.openUrl",
        lambda url: (opened.append(url.toLocalFile()), True)[1],
    )
    pane.open_folder()
    assert opened == [str(Path(recs["F16"].path or "").parent)]


def test_package_export_writes_a_verifiable_file(
    qtbot: Any, main_window: Any, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from app.core.export.checksums import check_sums

    base = _import_tiny(main_window, tiny_llama_dir)
    pane = _pane(qtbot, main_window)
    pane.set_target("package")
    assert pane.select_model(base.id)
    out = tmp_path / "out" / "tiny.tar.gz"
    pane.package_file.setText(str(out))
    job = _run(qtbot, pane, 60_000)
    assert job.state == JobState.SUCCEEDED, (job.error, job.hint)
    assert out.is_file()
    dest = tmp_path / "unpacked"
    with tarfile.open(out) as tf:
        tf.extractall(dest, filter="data")
    report = check_sums(dest)
    assert report.ok and report.checked >= 4  # manifest, card and the model's files
    assert (dest / "manifest.json").is_file() and (dest / "SHA256SUMS").is_file()
    rec = pane.records()[0]
    assert rec.kind == "package" and rec.state == "succeeded" and rec.path == str(out)
    assert pane.history.item(0, 1).text() == "Package" and pane.history.item(0, 6).text() == "done"


def test_failed_verification_is_shown_with_why(qtbot: Any, main_window: Any) -> None:
    from app.core.export.records import ExportStore

    store = ExportStore(main_window.services.workspace)
    store.start("x-f16", "gguf", "some-model", quant="F16")
    ver = {
        "quant": "F16", "positions": 100, "top1_agreement": 0.42, "ppl_source": 10.0,
        "ppl_gguf": 15.0, "ppl_ratio": 1.5, "max_abs_logit_diff": 3.0, "tokenizer_match": True,
        "min_top1": 1.0, "max_ratio": 1.01, "passed": False, "seconds": 1.0,
    }  # fmt: skip
    store.finish("x-f16", ok=False, verification=ver, error="verification failed")
    pane = _pane(qtbot, main_window)
    assert pane.history.rowCount() == 1
    assert pane.history.item(0, 6).text() == "verification FAILED"
    assert pane.history.item(0, 4).text() == "42.0%"
    assert "below the 100% required for F16" in pane.history.item(0, 6).toolTip()
    pane.select_export("x-f16")
    text = pane.details.toPlainText()
    assert "Verification failed" in text and "Why:" in text and "1.5000" in text


def test_docker_build_needs_an_engine_and_says_why(
    qtbot: Any, main_window: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.ui.panes.export.qt_export_pane as mod

    monkeypatch.setattr(mod, "docker_available", lambda: "the docker client is not installed")
    pane = _pane(qtbot, main_window)
    pane.set_target("docker")
    qtbot.waitUntil(lambda: pane.docker_reason != "checking for a Docker engine…", timeout=10_000)
    assert not pane.build_image.isEnabled()
    assert "docker client is not installed" in pane.docker_status.text()
    assert pane.model_combo.count() == 0 and "No GGUF model" in pane.model_hint.text()
    assert not pane.start_btn.isEnabled()

    monkeypatch.setattr(mod, "docker_available", lambda: None)
    pane2 = _pane(qtbot, main_window)
    qtbot.waitUntil(lambda: pane2.docker_reason is None, timeout=10_000)
    assert pane2.build_image.isEnabled()


def test_cancel_and_refused_choices(
    qtbot: Any, main_window: Any, tiny_llama_dir: Path, tmp_path: Path, no_modal_dialogs: list[str]
) -> None:
    base = _import_tiny(main_window, tiny_llama_dir)
    pane = _pane(qtbot, main_window)
    pane.set_target("package")
    assert pane.select_model(base.id)
    taken = tmp_path / "taken.tar.gz"
    taken.write_text("x")
    pane.package_file.setText(str(taken))
    assert pane.start_export() is None  # refused before any job: the file exists
    assert any("already exists" in t for t in no_modal_dialogs)

    pane.set_target("gguf")
    assert pane.select_model(base.id)
    pane.set_quants([])
    assert not pane.start_btn.isEnabled()
    pane.set_quants(["F16"])
    assert pane.start_btn.isEnabled()
    job = pane.start_export()
    assert job is not None
    pane.cancel_export()  # still queued: cancelled at once
    qtbot.waitUntil(lambda: pane.job.state in FINAL_STATES, timeout=30_000)
    assert pane.job.state == JobState.CANCELLED
    # the pane hears of it from the jobs hub's next round (emitted on the UI thread)
    qtbot.waitUntil(lambda: "cancelled" in pane.status.text(), timeout=10_000)
    assert pane.start_btn.isEnabled()


def test_pane_module_imports_no_heavy_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys, app.ui.panes.export.qt_export_pane;"
        "print([m for m in ('torch','transformers','llama_cpp','peft') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
