"""The Serving pane: requests sent to the app's model host show in its charts and table."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import openai

from app.core.models import ModelRegistry


def test_requests_to_the_host_appear_in_the_charts_and_the_table(
    qtbot: Any, main_window: Any, gemma_gguf: Path, ui_watchdog: Any
) -> None:
    services = main_window.services
    pane = main_window.pane("serving")
    assert services.host.endpoint() is None
    qtbot.waitUntil(lambda: "not running" in pane.status.text, timeout=5_000)

    rec = ModelRegistry(services.workspace).import_gguf(gemma_gguf, copy=False, name="gemma")
    lease = services.host.lease(rec)  # what Chat does: starts the shared host
    try:
        client = openai.OpenAI(base_url=lease.base_url, api_key=lease.token, max_retries=0)
        with ui_watchdog.watch():
            qtbot.waitUntil(lambda: bool(pane.readings), timeout=10_000)  # a first reading
            for prompt in ("The capital of France is", "One, two,"):
                client.completions.create(
                    model=lease.model, prompt=prompt, max_tokens=8, temperature=0
                )
            sent = time.monotonic()

            def shown() -> bool:
                rows = [pane.table.item(r, 2).text() for r in range(pane.table.rowCount())]
                return (
                    rows.count("/v1/completions") == 2
                    and pane.last is not None
                    and (pane.last.tokens_per_s > 0 or _tokens_in_history(pane) > 0)
                )

            qtbot.waitUntil(shown, timeout=2_000)  # the issue: within 2 s
            took = time.monotonic() - sent
        ui_watchdog.assert_no_stall()
    finally:
        services.host.release(lease)
    assert took <= 2.0
    model_col = [pane.table.item(r, 1).text() for r in range(pane.table.rowCount())]
    assert lease.model in model_col
    # each generation says how long it queued for its model (here alone: nobody ahead)
    queued = [
        float(pane.table.item(r, 7).text())
        for r in range(pane.table.rowCount())
        if pane.table.item(r, 2).text() == "/v1/completions"
    ]
    assert len(queued) == 2 and all(q >= 0 for q in queued)
    assert "requests in all" in pane.summary.text() and "loaded: " in pane.summary.text()
    # the charts hold the points: requests per second went above zero
    xs, ys = pane.curves["requests_per_s"].getData()
    assert len(xs) >= 1 and max(ys) > 0
    out = os.environ.get("DEMOAI_TEST_ARTIFACTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        main_window.grab().save(str(Path(out) / "serving-pane.png"))


def _tokens_in_history(pane: Any) -> float:
    return sum(f.tokens_per_s for _, f in pane.history)


def test_a_server_elsewhere_is_refused_while_offline(qtbot: Any, main_window: Any) -> None:
    pane = main_window.pane("serving")
    assert main_window.services.workspace.settings.offline
    assert not pane.add_server("http://10.0.0.5:8080", "k")  # never contacted
    assert "offline" in pane.status.text
    assert not pane.add_server("not a url", "k")
    assert pane.add_server("http://127.0.0.1:9/v1", "k")  # loopback: allowed, nothing there
    qtbot.waitUntil(lambda: "Cannot reach" in pane.status.text, timeout=10_000)
