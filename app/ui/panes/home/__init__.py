"""The Home pane: a first run through the core loop, each step marked done from the workspace."""
