"""``demoai data ...`` as real processes: import (a worker job), list, versions, export, recipes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import demoai

ROWS = [
    {"instruction": "Greet", "input": "", "output": "Hello"},
    {"instruction": "Mail", "input": "ann@example.com", "output": "Done"},
    {"instruction": "Greet", "input": "", "output": "Hello"},
]


def test_import_list_versions_export_and_recipe(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    r = demoai(ws, "data", "import", str(src), "--name", "mail", "--json")
    assert r.returncode == 0, r.stderr
    assert "100%" in r.stderr and "succeeded" in r.stderr
    imported = json.loads(r.stdout)
    assert imported["rows"] == 3 and imported["name"] == "mail"
    ds = imported["dataset_id"]

    listed = json.loads(demoai(ws, "data", "list", "--json").stdout)
    assert [(d["name"], d["rows"], d["current_version"]) for d in listed] == [
        ("mail", 3, imported["version"])
    ]

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"steps": [{"name": "dedupe"}, {"name": "redact_pii"}]}))
    r = demoai(ws, "data", "apply-recipe", "mail", str(recipe), "--json")
    assert r.returncode == 0, r.stderr
    applied = json.loads(r.stdout)
    assert applied["rows"] == 2 and len(applied["versions"]) == 2

    versions = json.loads(demoai(ws, "data", "versions", ds, "--json").stdout)
    assert [v["operation"]["name"] for v in versions] == ["import", "dedupe", "redact_pii"]
    assert [v["current"] for v in versions] == [False, False, True]

    out = tmp_path / "out.jsonl"
    r = demoai(
        ws,
        "data",
        "export",
        f"{ds}@{imported['version'][:10]}",
        "--format",
        "jsonl",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert [json.loads(x) for x in out.read_text().splitlines()] == ROWS
    out_csv = tmp_path / "out.csv"
    r = demoai(ws, "data", "export", "mail", "--format", "csv", "--out", str(out_csv))
    assert r.returncode == 0, r.stderr
    assert out_csv.read_text().splitlines()[2] == '"Mail","[EMAIL]","Done"'

    d = json.loads(
        demoai(ws, "data", "diff", ds, imported["version"], applied["version"], "--json").stdout
    )
    # dedupe removed the second Greet; redact_pii changed one cell of Mail
    assert (d["rows_removed"], d["rows_added"], d["rows_changed"]) == (1, 0, 1)
    text = demoai(ws, "data", "diff", ds, imported["version"], applied["version"]).stdout
    assert "v1 (" in text and "-> v3 (" in text
    assert 'row 2: changed input: "ann@example.com" -> "[EMAIL]"' in text
    assert "old row 3: removed" in text
    shown = json.loads(demoai(ws, "data", "show", ds, "--rows", "1", "--json").stdout)
    assert shown["head"] == [{"instruction": "Greet", "input": "", "output": "Hello"}]


def test_failed_import_reports_lines_and_leaves_no_dataset(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    src = tmp_path / "bad.csv"
    src.write_text("a,b\n1,2\n3\n4,5\n")
    r = demoai(ws, "data", "import", str(src))
    assert r.returncode == 1
    assert "bad.csv line 3: expected 2 fields, found 1" in r.stderr
    assert json.loads(demoai(ws, "data", "list", "--json").stdout) == []
    assert list((ws / "datasets").iterdir()) == []
    r = demoai(ws, "data", "import", str(src), "--skip-bad", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bad_rows"] == 1
    r = demoai(ws, "data", "show", "nope")
    assert r.returncode == 2 and "No dataset 'nope'" in r.stderr


def test_import_of_text_that_is_not_utf8_fails_skips_or_replaces(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    src = tmp_path / "latin1.csv"
    src.write_bytes("name,city\nAnn,Köln\nBob,Paris\nCid,Málaga\n".encode("latin-1"))
    r = demoai(ws, "data", "import", str(src))
    assert r.returncode == 1
    assert "latin1.csv line 2: not UTF-8 text (byte 0xf6)" in r.stderr
    assert "latin1.csv line 4" in r.stderr and "--replace-invalid" in r.stderr
    assert list((ws / "datasets").iterdir()) == []
    r = demoai(ws, "data", "import", str(src), "--skip-bad", "--json", "--name", "skipped")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bad_rows"] == 2 and json.loads(r.stdout)["rows"] == 1
    r = demoai(ws, "data", "import", str(src), "--replace-invalid", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["replaced"] == 2 and result["rows"] == 3 and result["bad_rows"] == 0
    shown = demoai(ws, "data", "show", result["dataset_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert [row["city"] for row in json.loads(shown.stdout)["head"]] == [
        "K\ufffdln",
        "Paris",
        "M\ufffdlaga",
    ]
    out = tmp_path / "out.csv"
    r = demoai(ws, "data", "export", result["dataset_id"], "--format", "csv", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "K\ufffdln" in out.read_text("utf-8")


def test_augment_prompt_from_library_is_checked_before_a_job(
    tmp_path: Path, gemma_gguf: Path
) -> None:
    from app.core.agents.prompts import PromptStore
    from app.core.data.store import DatasetStore
    from app.core.models.registry import ModelRegistry
    from app.core.workspace import Workspace

    ws_dir = tmp_path / "ws"
    ws = Workspace.open(ws_dir)
    import pyarrow as pa

    v = DatasetStore(ws).create_dataset("d", pa.table({"instruction": ["Greet"]}))
    PromptStore(ws.db).save("bad", "Paraphrase this.")  # no {{text}}
    model = ModelRegistry(ws).import_path(gemma_gguf, copy=False).id
    ws.close()
    r = demoai(ws_dir, "data", "augment", v.dataset_id, "--model", model, "--column",
               "instruction", "--prompt", "bad@1")  # fmt: skip
    assert r.returncode != 0 and "{{text}}" in r.stderr, r.stderr
    r2 = demoai(ws_dir, "jobs", "list", "--json")
    assert json.loads(r2.stdout) == []
