"""The Jobs pane: every job with state, progress, elapsed time, cancel, resume and its log."""
