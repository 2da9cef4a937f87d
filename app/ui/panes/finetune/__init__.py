"""The Fine-tune pane: configure, check, run, watch live curves, resume, use the adapter."""
