"""The process boundary: start, watch and cancel job processes; the child entry point. No Qt."""

import app.workers.kinds  # noqa: F401  (registers the kinds whose entry points live here)
