"""The Chat pane: conversations as trees, streamed from the local model host."""
