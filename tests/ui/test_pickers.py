"""The shared pickers show names and refresh themselves when another process changes things."""

from __future__ import annotations

from app.ui.widgets.pickers import DatasetPicker, ModelPicker, VersionPicker
from tests.support.cli import demoai


def test_pickers_follow_changes_made_by_the_cli(
    qtbot, main_window, tmp_path, tiny_llama_dir
) -> None:
    services = main_window.services
    models, datasets, versions = (
        ModelPicker(services),
        DatasetPicker(services),
        VersionPicker(services),
    )
    for w in (models, datasets, versions):
        qtbot.addWidget(w)
    assert models.count() == 0 and datasets.count() == 0
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n")
    assert (
        demoai(services.workspace.root, "data", "import", str(csv), "--name", "qa").returncode == 0
    )
    qtbot.waitUntil(lambda: datasets.count() == 1, timeout=3000)
    assert datasets.itemText(0) == "qa  (2 rows)"
    versions.set_dataset(datasets.current_id())
    assert versions.count() == 1 and "current" in versions.itemText(0)
    assert versions.current_id() and len(versions.current_id()) > 12  # data is the full hash

    r = demoai(
        services.workspace.root,
        "models",
        "import",
        str(tiny_llama_dir),
        "--reference",
        "--name",
        "tiny",
    )
    assert r.returncode == 0, r.stderr
    qtbot.waitUntil(lambda: models.count() == 1, timeout=3000)
    assert models.itemText(0).startswith("tiny  (hf")  # the name, not the id
    assert models.current_id() != "tiny" and models.current_id().startswith("tiny")
