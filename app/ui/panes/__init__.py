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


#: The panes in sidebar order. Capabilities add theirs when they really work.
PANES: list[PaneSpec] = [
    PaneSpec("models", "Models", "app.ui.panes.models.qt_models_pane:ModelsPane", "Model library"),
    PaneSpec(
        "datasets",
        "Datasets",
        "app.ui.panes.datasets.qt_datasets_pane:DatasetsPane",
        "Import, edit, version and prepare data",
    ),
    PaneSpec(
        "finetune",
        "Fine-tune",
        "app.ui.panes.finetune.qt_finetune_pane:FinetunePane",
        "LoRA / QLoRA fine-tuning with live curves",
    ),
    PaneSpec(
        "evaluate",
        "Evaluate & Arena",
        "app.ui.panes.evaluate.qt_evaluate_pane:EvaluatePane",
        "Metrics on your data, and blind arena votes",
    ),
    PaneSpec("chat", "Chat", "app.ui.panes.chat.qt_chat_pane:ChatPane", "Chat with a model"),
    PaneSpec(
        "agents",
        "Agents",
        "app.ui.panes.agents.qt_agents_pane:AgentsPane",
        "Agents with tools, approvals, forks",
    ),
    PaneSpec(
        "export",
        "Export",
        "app.ui.panes.export.qt_export_pane:ExportPane",
        "Verified GGUF, Docker bundle for IT, model package",
    ),
    PaneSpec("jobs", "Jobs", "app.ui.panes.jobs.qt_jobs_pane:JobsPane", "Background jobs"),
]
