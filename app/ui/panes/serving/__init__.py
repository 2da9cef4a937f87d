"""Serving pane: live figures of a model server (see qt_serving_pane.py)."""
