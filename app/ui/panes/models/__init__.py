"""The Models pane: the model library with import, discover, download, remove and chat."""
