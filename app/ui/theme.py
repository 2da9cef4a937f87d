"""The look of the window: light and dark palettes, one stylesheet, icons.

Colours live here and nowhere else: widgets say what they are (``set_role(label,
"error")``) and the stylesheet colours them for the current scheme, so a theme
switch repaints everything without a widget knowing its colour. The scheme
follows the system (``QStyleHints.colorScheme``, live) unless the user picked
Light or Dark in Settings (kept per user, see ``app/ui/qt_app_state.py``).

Icons come from qtawesome (Material Design Icons), tinted with the scheme's text
colour. Importing qtawesome costs 0.2-0.4 s, so it is imported after the window's
first paint, in slices on the UI thread (:func:`when_icons_ready`); the window shows
without icons until then.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication, QWidget

if TYPE_CHECKING:
    from collections.abc import Callable

#: What a user can choose in Settings.
CHOICES: tuple[tuple[str, str], ...] = (
    ("system", "Same as the system"),
    ("light", "Light"),
    ("dark", "Dark"),
)

#: Roles a widget can take (``set_role``); each is styled once in the stylesheet.
ROLES = ("title", "subtitle", "muted", "error", "success", "warning", "card", "step")


@dataclass(frozen=True)
class Colors:
    window: str
    base: str
    alt_base: str
    text: str
    muted: str
    border: str
    button: str
    accent: str
    accent_text: str
    error: str
    warning: str
    success: str
    sidebar: str
    sidebar_selected: str
    card: str
    link: str


LIGHT = Colors(
    window="#f5f6f8",
    base="#ffffff",
    alt_base="#f0f2f5",
    text="#1f2328",
    muted="#5b6470",
    border="#d0d7de",
    button="#fbfbfc",
    accent="#2563eb",
    accent_text="#ffffff",
    error="#b42318",
    warning="#8a5a00",
    success="#1a7f37",
    sidebar="#eceff3",
    sidebar_selected="#d7e3fa",
    card="#ffffff",
    link="#1d4ed8",
)

DARK = Colors(
    window="#1d2024",
    base="#15171a",
    alt_base="#22262b",
    text="#e6e8eb",
    muted="#9aa4af",
    border="#3a4048",
    button="#2a2e34",
    accent="#4c8dff",
    accent_text="#ffffff",
    error="#ff7b72",
    warning="#e3b341",
    success="#56d364",
    sidebar="#181a1e",
    sidebar_selected="#27364f",
    card="#23272d",
    link="#79aaff",
)

SCHEMES: dict[str, Colors] = {"light": LIGHT, "dark": DARK}

SPACING = 8  # the unit of every margin and gap (multiples of it)


def palette_for(c: Colors) -> QPalette:
    """A full QPalette for ``c`` (Fusion draws every standard widget from it)."""
    p = QPalette()
    role = QPalette.ColorRole
    group = QPalette.ColorGroup
    for r, value in (
        (role.Window, c.window),
        (role.WindowText, c.text),
        (role.Base, c.base),
        (role.AlternateBase, c.alt_base),
        (role.ToolTipBase, c.card),
        (role.ToolTipText, c.text),
        (role.PlaceholderText, c.muted),
        (role.Text, c.text),
        (role.Button, c.button),
        (role.ButtonText, c.text),
        (role.BrightText, c.error),
        (role.Highlight, c.accent),
        (role.HighlightedText, c.accent_text),
        (role.Link, c.link),
        (role.LinkVisited, c.link),
        (role.Light, _shade(c.button, 115)),
        (role.Midlight, _shade(c.button, 105)),
        (role.Mid, c.border),
        (role.Dark, _shade(c.border, 150)),
        (role.Shadow, "#000000"),
    ):
        p.setColor(r, QColor(value))
    for r in (role.WindowText, role.Text, role.ButtonText):
        p.setColor(group.Disabled, r, QColor(c.muted))
    p.setColor(group.Disabled, role.Highlight, QColor(c.border))
    return p


def _shade(hex_color: str, factor: int) -> str:
    col = QColor(hex_color)
    return (col.lighter(factor) if factor >= 100 else col.darker(200 - factor)).name()


def stylesheet_for(c: Colors) -> str:
    """The application stylesheet: spacing, typography and the colours of roles."""
    s = SPACING
    return f"""
QListWidget#sidebar {{
    background: {c.sidebar};
    border: none;
    border-right: 1px solid {c.border};
    outline: 0;
    padding: {s // 2}px 0;
}}
QListWidget#sidebar::item {{
    padding: {s - 2}px {s + 2}px;
    margin: 1px {s // 2}px;
    border-radius: 6px;
    color: {c.text};
}}
QListWidget#sidebar::item:hover {{ background: {c.alt_base}; }}
QListWidget#sidebar::item:selected {{
    background: {c.sidebar_selected};
    color: {c.text};
    font-weight: 600;
}}
QLabel[role="title"] {{ font-size: 18pt; font-weight: 600; }}
QLabel[role="subtitle"] {{ font-size: 12pt; font-weight: 600; }}
QLabel[role="muted"] {{ color: {c.muted}; }}
QLabel[role="error"] {{ color: {c.error}; }}
QLabel[role="success"] {{ color: {c.success}; }}
QLabel[role="warning"] {{ color: {c.warning}; }}
QFrame[role="card"] {{
    background: {c.card};
    border: 1px solid {c.border};
    border-radius: 8px;
}}
QFrame[role="step"] {{
    background: {c.card};
    border: 1px solid {c.border};
    border-radius: 8px;
}}
QFrame[role="step"][done="true"] {{ border-left: 4px solid {c.success}; }}
QFrame[role="step"][done="false"] {{ border-left: 4px solid {c.border}; }}
QFrame[role="step"] QLabel {{ background: transparent; border: none; }}
QGroupBox {{ font-weight: 600; margin-top: {s + 4}px; padding-top: {s // 2}px; }}
QGroupBox::title {{ subcontrol-origin: margin; left: {s}px; padding: 0 {s // 2}px; }}
QToolTip {{ color: {c.text}; background: {c.card}; border: 1px solid {c.border}; padding: 4px; }}
QStatusBar {{ border-top: 1px solid {c.border}; }}
QStatusBar QLabel {{ padding: 0 {s // 2}px; }}
"""


def set_role(widget: QWidget, role: str) -> None:
    """Give ``widget`` a styled role (see :data:`ROLES`); re-polished so it applies at once."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {ROLES}")
    widget.setProperty("role", role)
    repolish(widget)


def repolish(widget: QWidget) -> None:
    """Re-apply the stylesheet after a dynamic property of ``widget`` changed."""
    style = widget.style()
    style.unpolish(widget)
    style.polish(widget)
    widget.update()


def system_scheme() -> str:
    """'dark' or 'light' as the platform reports it (light when it does not say)."""
    hints = QGuiApplication.styleHints()
    return "dark" if hints.colorScheme() == Qt.ColorScheme.Dark else "light"


def resolve(choice: str, system: str | None = None) -> str:
    """The scheme a choice means now: 'light' or 'dark' (``system``: what the platform
    last said, else it is asked)."""
    if choice in SCHEMES:
        return choice
    return system or system_scheme()


def current_colors() -> Colors:
    """The colours of the scheme in use (light before a theme was applied)."""
    app = QApplication.instance()
    scheme = app.property("demoaiScheme") if app is not None else None
    return SCHEMES.get(str(scheme), LIGHT)


#: What makes icons: qtawesome's font class holding just the Material Design font that
#: every icon here comes from (14 ms to load, against 63 ms for qtawesome's nine fonts).
_qta: Any = None
#: The one icon font used (``mdi6.*`` names).
ICON_FONT = "mdi6"


def _load_icon_font() -> None:
    global _qta
    import qtawesome

    try:  # qtawesome's bundled-font table is private: use all fonts if it moved
        from qtawesome.iconic_font import IconicFont

        spec = [f for f in qtawesome._BUNDLED_FONTS if f[0] == ICON_FONT]
        _qta = IconicFont(*spec) if spec else qtawesome
    except (AttributeError, ImportError, TypeError):
        _qta = qtawesome


#: Icons are asked for this long after a window is shown, so that its first frame is on
#: screen before anything else happens.
ICON_DELAY_MS = 60


def after_first_paint(owner: QObject, fn: Callable[[], None]) -> None:
    """Run ``fn`` once the window just shown has had time to paint its first frame
    (not at all when ``owner`` is deleted before)."""
    QTimer.singleShot(ICON_DELAY_MS, owner, fn)


def icons_loaded() -> bool:
    """Whether qtawesome has been imported (the window never waits for it)."""
    return _qta is not None


class _IconLoader(QObject):
    """Imports qtawesome after the first paint, on the UI thread but in slices, then
    calls back.

    The import costs 0.2-0.4 s, most of it qtpy reading all of QtCore, QtGui and
    QtWidgets (each name read makes a type). It used to run on a thread, but PySide6
    makes types lazily and that is not safe while the UI thread uses Qt (see
    ``app/ui/warmup.py``). Now the types are made a few dozen per event-loop turn, then
    the import itself and the icon fonts take one turn each; making and painting the
    window's icons takes under 10 ms.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[QObject | None, Callable[[], None]]] = []
        self.slices: Any = None

    def start(self) -> None:
        if self.slices is not None:
            return
        from app.ui.warmup import ICON_QT_MODULES, UiSlices, qt_type_steps

        steps = itertools.chain(  # lazily: a module's names are read once it is imported
            qt_type_steps(ICON_QT_MODULES),
            [("import qtawesome", lambda: __import__("qtawesome")), ("icon font", _load_icon_font)],
        )
        self.slices = UiSlices(steps, self)
        self.slices.finished.connect(self._deliver)
        self.slices.start()

    @Slot()
    def _deliver(self) -> None:
        from shiboken6 import isValid

        pending, self.pending = self.pending, []
        for owner, fn in pending:
            if owner is None or isValid(owner):  # a window closed meanwhile gets nothing
                fn()


_loader: _IconLoader | None = None


def when_icons_ready(fn: Callable[[], None], owner: QObject | None = None) -> None:
    """Call ``fn`` on the UI thread once icons can be made: now, or after qtawesome has
    been imported in slices (not at all if ``owner`` was deleted meanwhile)."""
    global _loader
    if _qta is not None:
        fn()
        return
    if _loader is None:
        _loader = _IconLoader()
    _loader.pending.append((owner, fn))
    _loader.start()


def icon(name: str, *, color: str | None = None) -> QIcon:
    """A Material Design icon (``"mdi6.home-outline"``) tinted for the current scheme.

    Imports qtawesome here when :func:`when_icons_ready` has not done it yet."""
    if _qta is None:
        _load_icon_font()
    c = current_colors()
    return _qta.icon(name, color=color or c.text, color_disabled=c.muted)  # type: ignore[no-any-return]


class ThemeManager(QObject):
    """Applies the chosen scheme to the application and follows the system's scheme."""

    #: The scheme now applied: "light" or "dark".
    changed = Signal(str)

    @classmethod
    def for_app(cls, app: QApplication, choice: str = "system") -> ThemeManager:
        """The application's one manager (created on first use; the choice is kept after)."""
        found = app.findChild(ThemeManager, "demoaiTheme")
        if isinstance(found, ThemeManager):
            return found
        return cls(app, choice)

    def __init__(self, app: QApplication, choice: str = "system") -> None:
        super().__init__(app)
        self.setObjectName("demoaiTheme")
        self._app = app
        self._choice = choice if choice in dict(CHOICES) else "system"
        self.scheme = ""
        if app.style().name().lower() != "fusion":
            # Native styles (Windows, macOS) ignore parts of a custom palette: Fusion
            # draws both schemes the same way on every OS.
            app.setStyle("Fusion")
        self._system: str | None = None  # the platform's scheme, as last announced
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._system_changed)
        self.apply()

    @property
    def choice(self) -> str:
        return self._choice

    def set_choice(self, choice: str) -> None:
        """Use ``choice`` ("system", "light" or "dark") from now on."""
        if choice not in dict(CHOICES):
            raise ValueError(f"unknown theme {choice!r}")
        self._choice = choice
        self.apply()

    def apply(self) -> None:
        scheme = resolve(self._choice, self._system)
        colors = SCHEMES[scheme]
        self._app.setProperty("demoaiScheme", scheme)
        self._app.setPalette(palette_for(colors))
        self._app.setStyleSheet(stylesheet_for(colors))
        if scheme != self.scheme:
            self.scheme = scheme
            self.changed.emit(scheme)

    def _system_changed(self, scheme: Qt.ColorScheme) -> None:
        self._system = "dark" if scheme == Qt.ColorScheme.Dark else "light"
        if self._choice == "system":
            self.apply()
