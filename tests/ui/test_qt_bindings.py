"""The Qt bindings keep Python's reference counts: a long session must not abort.

PySide6 6.12.0 released a reference to ``None`` on every call of a method that
returns nothing (``QPainter.drawLine``, ``QLabel.setText``...). Before Python
3.12 ``None`` is an ordinary object: after a few thousand such calls (a few
minutes of live training curves) the process aborted with "Fatal Python error:
none_dealloc". The installer pins a version without the bug; this test fails
at once if a version with it comes back.
"""

from __future__ import annotations

import sys

import PySide6
from PySide6.QtCore import QLineF, QPointF
from PySide6.QtGui import QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import QLabel


def test_void_methods_do_not_release_none(qtbot) -> None:
    image = QImage(64, 64, QImage.Format.Format_ARGB32)
    painter = QPainter(image)
    label = QLabel()
    qtbot.addWidget(label)
    pen = QPen(QColor(0, 0, 0))
    calls = {
        "QPainter.setPen": lambda: painter.setPen(pen),
        "QPainter.drawLine": lambda: painter.drawLine(QPointF(1, 1), QPointF(9, 9)),
        "QPainter.drawLine(QLineF)": lambda: painter.drawLine(QLineF(1, 1, 9, 9)),
        "QLabel.setText": lambda: label.setText("x"),
    }
    lost = {}
    try:
        for name, call in calls.items():
            before = sys.getrefcount(None)
            for _ in range(200):
                call()
            lost[name] = before - sys.getrefcount(None)
    finally:
        painter.end()
    # Immortal None (Python >= 3.12) reports a constant count; either way nothing is lost.
    assert all(n <= 5 for n in lost.values()), (PySide6.__version__, lost)
