"""world_size in the training config: the checks made before any process starts."""

from __future__ import annotations

import pytest

from app.core.errors import ConfigError
from app.core.train.config import TrainConfig


def _cfg(**over: object) -> TrainConfig:
    return TrainConfig.from_dict({"base_model": "/m", "data_path": "/d.jsonl", **over})


def test_world_size_defaults_to_one_and_old_configs_load() -> None:
    cfg = _cfg()
    assert cfg.world_size == 1
    # A config (or checkpoint, or manifest) written before the field existed.
    old = {k: v for k, v in cfg.to_dict().items() if k != "world_size"}
    assert TrainConfig.from_dict(old) == cfg
    assert _cfg(world_size=4, batch_size=8).world_size == 4


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"world_size": 0}, "world_size must be between 1 and 64"),
        ({"world_size": 65}, "world_size must be between 1 and 64"),
        ({"world_size": 2, "batch_size": 3}, "batch_size 3 must be a multiple of world_size 2"),
        ({"world_size": 2, "batch_size": 4, "method": "qlora"}, "needs FSDP"),
        ({"world_size": 2, "batch_size": 4, "method": "lora8bit"}, "needs FSDP"),
    ],
)
def test_world_size_problems_are_refused(over: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(**over)
    assert needle in str(err.value)
