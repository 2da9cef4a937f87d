"""Panes of the main window. Each is a folder whose ``__init__`` names NAME, ORDER and WIDGET.

``WIDGET`` is a ``"module:Class"`` string so a pane's module (and what it
imports) loads only when the pane is first shown. A pane class takes
``(services, parent)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaneSpec:
    key: str
    name: str
    widget: str  # "module:Class"
    tooltip: str = ""
    icon: str = ""  # a qtawesome name, e.g. "mdi6.home-outline" (app/ui/theme.py)


#: The panes in sidebar order. Capabilities add theirs when they really work.
PANES: list[PaneSpec] = [
    PaneSpec(
        "home",
        "Home",
        "app.ui.panes.home.qt_home_pane:HomePane",
        "A first run through the core loop, step by step",
        "mdi6.home-outline",
    ),
    PaneSpec(
        "models",
        "Models",
        "app.ui.panes.models.qt_models_pane:ModelsPane",
        "Model library",
        "mdi6.cube-outline",
    ),
    PaneSpec(
        "datasets",
        "Datasets",
        "app.ui.panes.datasets.qt_datasets_pane:DatasetsPane",
        "Import, edit, version and prepare data",
        "mdi6.table",
    ),
    PaneSpec(
        "finetune",
        "Fine-tune",
        "app.ui.panes.finetune.qt_finetune_pane:FinetunePane",
        "LoRA / QLoRA fine-tuning with live curves",
        "mdi6.tune-variant",
    ),
    PaneSpec(
        "evaluate",
        "Evaluate & Arena",
        "app.ui.panes.evaluate.qt_evaluate_pane:EvaluatePane",
        "Metrics on your data, and blind arena votes",
        "mdi6.scale-balance",
    ),
    PaneSpec(
        "chat",
        "Chat",
        "app.ui.panes.chat.qt_chat_pane:ChatPane",
        "Chat with a model",
        "mdi6.chat-outline",
    ),
    PaneSpec(
        "agents",
        "Agents",
        "app.ui.panes.agents.qt_agents_pane:AgentsPane",
        "Agents with tools, approvals, forks",
        "mdi6.robot-outline",
    ),
    PaneSpec(
        "export",
        "Export",
        "app.ui.panes.export.qt_export_pane:ExportPane",
        "Verified GGUF, Docker bundle for IT, model package",
        "mdi6.export-variant",
    ),
    PaneSpec(
        "serving",
        "Serving",
        "app.ui.panes.serving.qt_serving_pane:ServingPane",
        "Live figures of a model server: this app's host, demoai serve, a Docker bundle",
        "mdi6.chart-line",
    ),
    PaneSpec(
        "jobs",
        "Jobs",
        "app.ui.panes.jobs.qt_jobs_pane:JobsPane",
        "Background jobs",
        "mdi6.progress-clock",
    ),
]
