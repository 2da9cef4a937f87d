"""Fine-tune pane: evaluate the checkpoints of a finished run; the points join its Loss plot."""

from __future__ import annotations

import math

import pytest

from app.core.jobs.store import JobState
from tests.support.training import add_tiny_model_and_echo_data, one_train_thread  # noqa: F401


@pytest.fixture
def pane(qtbot, main_window, tiny_llama_dir):
    add_tiny_model_and_echo_data(main_window.services.workspace, tiny_llama_dir, repeats=2)
    p = main_window.pane("finetune")
    p.refresh_inputs()
    return p


def test_evaluate_checkpoints_draws_points_on_the_loss_plot(qtbot, pane) -> None:
    pane.preset.setCurrentIndex(pane.preset.findData("quick_test"))
    pane._set_field("max_steps", 10)
    pane._set_field("save_every", 5)
    pane._set_field("device", "cpu")
    pane.name.setText("ckpt-lora")
    job = pane.start()
    assert job is not None
    jobs = pane.services.jobs
    qtbot.waitUntil(lambda: jobs.get(job.id).state == JobState.SUCCEEDED, timeout=120_000)
    pane.refresh_runs(select=job.id)
    qtbot.waitUntil(lambda: pane.ckpt_btn.isEnabled(), timeout=5000)
    pane.ckpt_btn.click()
    ev = next(j for j in jobs.list_jobs() if j.kind == "eval.checkpoints")
    assert ev.params["train_job"] == job.id
    qtbot.waitUntil(
        lambda: jobs.get(ev.id).state in (JobState.SUCCEEDED, JobState.FAILED), timeout=120_000
    )
    final = jobs.get(ev.id)
    assert final.state == JobState.SUCCEEDED, final.error
    # base (step 0), checkpoint-5 and the final adapter (step 10): one point each
    qtbot.waitUntil(
        lambda: sorted(pane.curves.series(job.id, "ckpt_eval_loss")) == [0, 5, 10], timeout=5000
    )
    series = pane.curves.series(job.id, "ckpt_eval_loss")
    assert all(math.isfinite(v) for v in series.values())
    item = pane.curves.lines[(job.id, "ckpt_eval_loss")]
    assert item in pane.curves.plots["loss"].listDataItems()
    xs, ys = item.getData()
    assert list(xs) == [0, 5, 10] and len(ys) == 3
    assert item.opts["pen"] is None and item.opts["symbol"] == "star"  # markers, no line
    assert pane.curves.series(job.id, "train_loss")  # next to the run's own loss curve
    assert "Checkpoints evaluated" in pane.run_info.text()

    # Unticked and ticked again (as after a restart): the points come back from the events.
    pane.curves.set_runs({})
    assert (job.id, "ckpt_eval_loss") not in pane.curves.lines
    pane.refresh_runs(select=job.id)
    assert sorted(pane.curves.series(job.id, "ckpt_eval_loss")) == [0, 5, 10]
