"""Training defaults fitted to the model, and the estimate's wording."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.core.train.config import TrainConfig, fit_to_model, validate_against_model
from tests.support.training import write_chat_data


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_chat_data(tmp_path / "train.jsonl")


def _context(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])


def test_default_max_seq_len_fits_the_model_context(tiny_llama_dir: Path, data: Path) -> None:
    ctx = _context(tiny_llama_dir)
    cfg = TrainConfig(base_model=str(tiny_llama_dir), data_path=str(data))
    assert cfg.max_seq_len > ctx  # the default (1024) is beyond the tiny model's context
    fitted, notes = fit_to_model(cfg)
    assert fitted.max_seq_len == ctx
    assert len(notes) == 1 and f"max_seq_len set to {ctx}" in notes[0]
    assert validate_against_model(fitted) == []
    # a value the user set is kept, and refused with the limit
    kept, notes = fit_to_model(cfg, explicit={"max_seq_len"})
    assert kept.max_seq_len == cfg.max_seq_len and notes == []
    assert any(f"set max_seq_len <= {ctx}" in p for p in validate_against_model(kept))
    # a default that fits is left alone, without a note
    small = cfg.with_changes(max_seq_len=64)
    assert fit_to_model(small) == (small, [])


def test_default_fit_leaves_a_model_without_context_alone(tmp_path: Path, data: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"hidden_size": 8}')
    cfg = TrainConfig(base_model=str(tmp_path / "m"), data_path=str(data))
    assert fit_to_model(cfg) == (cfg, [])
    missing = TrainConfig(base_model=str(tmp_path / "nope"), data_path=str(data))
    assert fit_to_model(missing) == (missing, [])


def _cli(*argv: str) -> int:
    from app.cli.main import main

    return main(list(argv))


def test_cli_fits_the_default_and_refuses_an_explicit_value(
    tiny_llama_dir: Path, data: Path, workspace: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = _context(tiny_llama_dir)
    base = ["--workspace", str(workspace.root), "train", "--base", str(tiny_llama_dir)]
    base += ["--data", str(data), "--device", "cpu", "--estimate"]
    assert _cli(*base) == 0
    out = capsys.readouterr()
    assert f"Note: max_seq_len set to {ctx}, the model's context" in out.err
    assert "About" in out.out
    assert _cli(*base, "--max-seq-len", "1024") == 2
    err = capsys.readouterr().err
    assert f"max_seq_len 1024 is beyond the model's context of {ctx} tokens" in err
    # a config file that names max_seq_len counts as set; one that does not gets the fit
    cfg = data.parent / "cfg.json"
    cfg.write_text(
        json.dumps({"base_model": str(tiny_llama_dir), "data_path": str(data), "max_seq_len": 2048})
    )
    assert (
        _cli("--workspace", str(workspace.root), "train", "--config", str(cfg), "--estimate") == 2
    )
    assert "max_seq_len 2048 is beyond" in capsys.readouterr().err
    cfg.write_text(json.dumps({"base_model": str(tiny_llama_dir), "data_path": str(data)}))
    assert (
        _cli("--workspace", str(workspace.root), "train", "--config", str(cfg), "--estimate") == 0
    )
    assert f"max_seq_len set to {ctx}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("seconds", "reads"),
    [(0.4, "about 0.4 s"), (12.0, "about 12 s"), (45.6, "about 45 s"), (150, "about 2 min 30 s")],
)
def test_estimate_summary_reads_seconds_under_a_minute(seconds: float, reads: str) -> None:
    from app.core.train.estimate import Estimate

    text = Estimate(474_600_000, seconds=seconds).summary()
    assert text == f"Needs about 474.6 MB of memory, {reads}."
    assert "0 min" not in text


def test_estimate_summary_without_a_time_and_for_a_short_run(
    tiny_llama_dir: Path, data: Path
) -> None:
    from app.core.train.estimate import Estimate, estimate_run

    assert Estimate(2_000_000).summary() == "Needs about 2.0 MB of memory."
    cfg = TrainConfig(base_model=str(tiny_llama_dir), data_path=str(data), max_seq_len=128)
    est = estimate_run(cfg.with_changes(device="cpu"))
    assert est.seconds is not None and est.seconds < 60  # eight short records on a tiny model
    assert est.summary().endswith(" s.") and "min" not in est.summary()
