"""Widgets shared by several panes (status line, pickers, forms)."""
