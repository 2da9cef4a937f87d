"""Registry of job kinds: kind name -> the function a worker process runs.

Functions are named as ``"module:function"`` strings and imported only inside
the worker, so registering a kind never imports torch or transformers.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from app.core.errors import NotFoundError

Resource = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class JobKind:
    """One kind of background job."""

    name: str
    entry: str  # "package.module:function", called as function(ctx, **params)
    title: str
    resource: Resource = "cpu"
    resumable: bool = False
    description: str = ""

    def load(self) -> Callable[..., Any]:
        """Import and return the job function (in the worker process)."""
        module, _, attr = self.entry.partition(":")
        fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        return fn


_KINDS: dict[str, JobKind] = {}
_plugins_loaded = False


def register_kind(kind: JobKind) -> JobKind:
    """Add (or replace) a job kind."""
    _KINDS[kind.name] = kind
    return kind


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import app.core.jobs.builtin  # noqa: F401  (registers the built-in kinds)

    # Extra kinds from other packages (tests use this), comma separated module names.
    for name in filter(None, os.environ.get("DEMOAI_JOB_PLUGINS", "").split(",")):
        importlib.import_module(name.strip())


def get_kind(name: str) -> JobKind:
    """The kind called ``name``; NotFoundError when unknown."""
    _load_plugins()
    try:
        return _KINDS[name]
    except KeyError:
        raise NotFoundError(
            f"Unknown job kind '{name}'.", f"Known kinds: {', '.join(sorted(_KINDS))}."
        ) from None


def kinds() -> list[JobKind]:
    """Every registered kind, sorted by name."""
    _load_plugins()
    return [_KINDS[k] for k in sorted(_KINDS)]
