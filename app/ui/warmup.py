"""Warming the window up after its first paint: no freeze, and Qt only on the UI thread.

Three things are slow the first time they are needed: the panes' Python dependencies
(pyarrow, numpy, the core modules behind each pane), the Qt-bound libraries (qtawesome
reads all of QtCore, QtGui and QtWidgets through qtpy; pyqtgraph copies them and adds
QtSvg, QtOpenGL, QtTest) and the panes' own widget classes. Done on the UI thread when
a pane is first opened, that was a 0.6-0.7 s freeze on the click.

Qt's Python binding creates its types lazily, the first time a name is read, and that
is not safe while another thread uses Qt: importing pyqtgraph on a thread crashed the
window (a segmentation fault in pyqtgraph's ``_copy_attrs``, seen in a test run). So:

- a thread imports only what is not Qt-bound (:func:`non_qt_imports`: read from the
  panes' sources, nothing is imported to find it);
- the UI thread does the rest in slices, one per event-loop turn (:class:`UiSlices`),
  so input and painting run in between: PySide6 types made a few dozen at a time, then
  each Qt-bound library and each pane module on its own.
"""

from __future__ import annotations

import importlib
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal, Slot

#: Module prefixes that touch Qt when imported (imported on the UI thread only).
QT_BOUND = (
    "PySide6",
    "shiboken6",
    "pyqtgraph",
    "qtawesome",
    "qtpy",
    "superqt",
    "magicgui",
    "app.ui",
)
#: What qtawesome (through qtpy) reads whole.
ICON_QT_MODULES = ("PySide6.QtCore", "PySide6.QtGui", "PySide6.QtOpenGL", "PySide6.QtWidgets")
#: ... and what pyqtgraph reads or imports on top.
PLOT_QT_MODULES = (*ICON_QT_MODULES, "PySide6.QtSvg", "PySide6.QtTest")
#: PySide6 names read in one slice (each may create a type: ~0.1-0.3 ms).
NAMES_PER_SLICE = 60

Step = tuple[str, Callable[[], object]]

_touched: set[str] = set()
#: The ``app`` package's folder.
APP_ROOT = Path(__file__).resolve().parents[1]


def import_quietly(name: str) -> None:
    """Import ``name``; a failure is left to the feature that needs it to report."""
    try:
        importlib.import_module(name)
    except Exception:  # reported where the module is used
        pass


def _source_of(module: str) -> Path | None:
    """The source file of an ``app.*`` module, found by path: ``importlib.util.find_spec``
    would import its parent packages, and those are Qt-bound here."""
    parts = module.split(".")
    if parts[0] != "app":
        return None
    base = APP_ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


#: ``import a.b, c as d`` and ``from a.b import x`` at any indentation (a function's own
#: imports count too). A regular expression, not ``ast``: CPython 3.11's ``ast.parse`` on
#: a second thread can fail ("AST constructor recursion depth mismatch") while the main
#: thread compiles, as pytest's assertion rewriting does.
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+([A-Za-z_][\w.]*)[ \t]+import\b|import[ \t]+([^#\n;]+))",
                     re.MULTILINE)  # fmt: skip


def imported_names(source: str) -> list[str]:
    """Absolute module names ``source`` imports (relative imports are skipped)."""
    out = []
    for m in _IMPORT.finditer(source):
        if m[1]:
            out.append(m[1])
            continue
        for part in m[2].split(","):
            name = part.strip().split()[0] if part.strip() else ""
            if re.fullmatch(r"[A-Za-z_][\w.]*", name):
                out.append(name)
    return out


def non_qt_imports(modules: Iterable[str]) -> list[str]:
    """What ``modules`` (and the ``app.ui`` modules they import) import that is not
    Qt-bound, read from their sources: top-level and function-level imports alike."""
    seen: set[str] = set()
    found: dict[str, None] = {}
    todo = list(modules)
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        source = _source_of(mod)
        if source is None:
            continue
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, ValueError):
            continue
        for name in imported_names(text):
            if name.startswith("app.ui"):
                todo.append(name)
            elif not name.startswith(QT_BOUND) and name != "__future__":
                found[name] = None
    return list(found)


def _read_names(module: object, names: list[str]) -> None:
    for name in names:
        getattr(module, name, None)


def qt_type_steps(modules: Iterable[str]) -> Iterator[Step]:
    """Import each PySide6 module and make its types, a few dozen names a step."""
    for name in modules:
        if name in _touched:
            continue
        yield f"import {name}", partial(import_quietly, name)
        mod = sys.modules.get(name)
        _touched.add(name)
        if mod is None:
            continue
        names = dir(mod)
        for i in range(0, len(names), NAMES_PER_SLICE):
            part = names[i : i + NAMES_PER_SLICE]
            yield f"{name} names", partial(_read_names, mod, part)


class UiSlices(QObject):
    """Runs steps on the UI thread, one per event-loop turn; ``timings`` keeps how long
    each took (``bench/startup.py`` prints the longest)."""

    finished = Signal()

    def __init__(self, steps: Iterable[Step], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._steps = iter(steps)
        self.timings: list[tuple[str, float]] = []

    def start(self) -> None:
        QTimer.singleShot(0, self, self._next)

    @Slot()
    def _next(self) -> None:
        t0 = time.perf_counter()
        try:
            label, fn = next(self._steps)  # a generator's own work counts in this slice
        except StopIteration:
            self.finished.emit()
            return
        try:
            fn()
        except Exception:  # a warm-up step never breaks the window
            pass
        self.timings.append((label, time.perf_counter() - t0))
        QTimer.singleShot(0, self, self._next)


class PaneWarmup(QObject):
    """Imports every pane's module before it is first opened (see the module docstring).
    ``done`` is set once all are imported."""

    _libraries_imported = Signal()

    def __init__(self, modules: list[str], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.modules = modules
        self.done = threading.Event()
        self.slices: UiSlices | None = None
        self._libraries_imported.connect(self._import_qt_bound)  # queued: we live on the UI thread

    def start(self) -> None:
        threading.Thread(target=self._import_libraries, name="demoai-warmup", daemon=True).start()

    def _import_libraries(self) -> None:
        try:
            for name in non_qt_imports(self.modules):
                import_quietly(name)
        finally:
            try:
                self._libraries_imported.emit()
            except RuntimeError:  # the window closed meanwhile: nothing left to warm up
                pass

    @Slot()
    def _import_qt_bound(self) -> None:
        steps: list[Iterable[Step]] = [
            qt_type_steps(PLOT_QT_MODULES),
            [("import pyqtgraph", lambda: import_quietly("pyqtgraph"))],
            [(f"import {m}", partial(import_quietly, m)) for m in self.modules],
        ]
        self.slices = UiSlices((s for group in steps for s in group), self)
        self.slices.finished.connect(self.done.set)
        self.slices.start()
