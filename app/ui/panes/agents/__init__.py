"""The Agents pane: versioned agents with tools, live runs with approvals, forkable runs."""
