"""Fine-tuning: config, data, the training job, estimates and adapter merge.

Importing this package imports no torch: the loop and merge import it inside
their functions, so the window process can build and check configs.
"""

from app.core.train.config import PRESETS, TrainConfig, validate_against_model
from app.core.train.estimate import Estimate, estimate_duration, estimate_memory, estimate_run

__all__ = [
    "PRESETS",
    "Estimate",
    "TrainConfig",
    "estimate_duration",
    "estimate_memory",
    "estimate_run",
    "validate_against_model",
]
