"""Fine-tune accepts any dataset: a column mapping applied for the run and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from app.core.data.recipes import ColumnMapping
from app.core.data.store import DatasetStore
from app.core.errors import ConfigError
from app.core.models.registry import ModelRegistry
from app.core.train.config import TrainConfig
from app.core.train.data import check_data_file
from app.core.train.library import config_from_library

ROWS = [{"question": f"Q{i}?", "answer": f"A{i}.", "id": i} for i in range(5)]


@pytest.fixture
def qa(workspace, tiny_llama_dir: Path) -> str:
    ModelRegistry(workspace).import_hf_folder(tiny_llama_dir, copy=False, name="tiny")
    return DatasetStore(workspace).create_dataset("faq", pa.Table.from_pylist(ROWS)).dataset_id


def test_a_mapping_is_applied_for_the_run_and_recorded_in_the_config(workspace, qa) -> None:
    with pytest.raises(ConfigError) as err:  # without one: said what to do, where
        config_from_library(workspace, "tiny", qa)
    assert "Fine-tune form" in str(err.value)
    step = ColumnMapping(user="question", assistant="answer").step().to_dict()
    cfg = config_from_library(workspace, "tiny", qa, mapping=step)
    assert cfg.data_format == "chat" and cfg.data_mapping == step
    path = Path(cfg.data_path)
    assert path.name.startswith("train-mapped-") and check_data_file(path, "chat") == []
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert lines[3] == {
        "messages": [
            {"role": "user", "content": "Q3?"},
            {"role": "assistant", "content": "A3."},
        ]
    }
    # the same mapping reuses the file; the version itself is untouched
    mtime = path.stat().st_mtime_ns
    again = config_from_library(workspace, "tiny", qa, mapping=step)
    assert again.data_path == cfg.data_path and path.stat().st_mtime_ns == mtime
    assert DatasetStore(workspace).read_table(qa).column_names == ["question", "answer", "id"]
    # a config (and so a manifest) with the mapping reads back
    assert TrainConfig.from_json(cfg.to_json()).data_mapping == step
    # prompt/completion, with an extra input column
    pc = ColumnMapping(user="question", extra="id", assistant="answer", format="prompt_completion")
    cfg = config_from_library(workspace, "tiny", qa, mapping=pc.step().to_dict())
    first = json.loads(Path(cfg.data_path).read_text(encoding="utf-8").splitlines()[1])
    assert cfg.data_format == "prompt_completion"
    assert first == {"prompt": "Q1?\n\n1", "completion": "A1."}


def test_a_mapping_must_be_a_template_step_on_columns_the_data_has(workspace, qa) -> None:
    with pytest.raises(ConfigError, match="map_template step"):
        config_from_library(workspace, "tiny", qa, mapping={"name": "dedupe", "params": {}})
    bad = ColumnMapping(user="prompt", assistant="answer").step().to_dict()
    with pytest.raises(ConfigError, match="column"):
        config_from_library(workspace, "tiny", qa, mapping=bad)
    assert not list(DatasetStore(workspace).resolve(qa).path.glob("train-mapped-*"))
