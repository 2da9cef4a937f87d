"""Pipelines: versioned specs, runs as chains of jobs with pinned inputs, a step cache."""
