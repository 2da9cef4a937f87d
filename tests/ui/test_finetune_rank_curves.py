"""Per-rank figures of a multi-process training run in the Fine-tune curves."""

from __future__ import annotations

from app.ui.panes.finetune.qt_curves import CurvesWidget


def _metric(name: str, step: int, value: float) -> dict[str, object]:
    return {"type": "metric", "name": name, "step": step, "value": value}


def test_per_rank_throughput_and_memory_are_drawn_beside_the_totals(qtbot) -> None:
    w = CurvesWidget()
    qtbot.addWidget(w)
    w.set_runs({"job1": "run 1"})
    events = [
        _metric(name, step, value)
        for step in (1, 2)
        for name, value in (
            ("tokens_per_s", 200.0 + step),
            ("tokens_per_s.rank0", 100.0 + step),
            ("tokens_per_s.rank1", 99.0 + step),
            ("cpu_mem_mb", 500.0),
            ("cpu_mem_mb.rank0", 500.0),
            ("cpu_mem_mb.rank1", 480.0),
        )
    ]
    events.append(_metric("tokens_per_s.rankX", 1, 5.0))  # not a rank: ignored
    events.append(_metric("train_loss.rank0", 1, 5.0))  # not a per-rank quantity: ignored
    w.add_events("job1", events)
    assert w.series("job1", "tokens_per_s.rank1") == {1: 100.0, 2: 101.0}
    assert w.series("job1", "cpu_mem_mb.rank1") == {1: 480.0, 2: 480.0}
    assert w.series("job1", "tokens_per_s.rankX") == {}
    assert w.series("job1", "train_loss.rank0") == {}
    names = {i.name() for i in w.plots["tokens_per_s"].listDataItems()}
    assert names == {"run 1 tokens_per_s", "run 1 tokens_per_s.rank0", "run 1 tokens_per_s.rank1"}
    memory = {i.name() for i in w.plots["memory"].listDataItems()}
    assert "run 1 cpu_mem_mb.rank1" in memory
    assert not {i.name() for i in w.plots["loss"].listDataItems()}
    # Removing the run removes its per-rank lines too.
    w.set_runs({})
    assert not w.plots["tokens_per_s"].listDataItems()
