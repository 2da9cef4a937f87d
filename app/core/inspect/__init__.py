"""The model inspector: architecture from headers, weight statistics, comparisons, LoRA updates.

Nothing here imports torch or Qt; weights are read with numpy one chunk at a time
(``tensors.py``). The heavy work runs as the ``models.inspect`` job (``job.py``).
"""

from app.core.inspect.tensors import TensorInfo, TensorSet, open_tensors

__all__ = ["TensorInfo", "TensorSet", "open_tensors"]
