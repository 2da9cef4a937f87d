"""Weight-file safety: pickle checkpoints can run code when loaded, so they need a trust decision.

Loading rule for engines (inference, training): a model whose ``extra["weights_format"]``
is ``"pickle"`` was trusted explicitly by the user (``extra["trust_pickle"]``) and must
still be loaded with ``torch.load(..., weights_only=True)``; every other HF model is
loaded with ``use_safetensors=True``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.errors import DemoAIError

PICKLE_EXTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFE_EXTS = (".safetensors",)
#: Files with these extensions that are not weights (tokenizer/trainer state, e.g. ``training_args.bin``).
_NON_WEIGHT_PICKLES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")


class UnsafeWeightsError(DemoAIError):
    """The folder's weights are pickle files and no trust decision was given."""


@dataclass
class WeightScan:
    """The weight files found in a folder, by kind (paths relative to the folder)."""

    safetensors: list[str] = field(default_factory=list)
    pickle: list[str] = field(default_factory=list)
    gguf: list[str] = field(default_factory=list)


def scan_weights(folder: Path) -> WeightScan:
    """Weight files directly in ``folder`` (sub-folders such as checkpoints are ignored)."""
    scan = WeightScan()
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        name = p.name.lower()
        if name.endswith(SAFE_EXTS):
            scan.safetensors.append(p.name)
        elif name.endswith(PICKLE_EXTS) and name not in _NON_WEIGHT_PICKLES:
            scan.pickle.append(p.name)
        elif name.endswith(".gguf"):
            scan.gguf.append(p.name)
    return scan


def check_folder_weights(folder: Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Refuse folders without weights or with only pickle weights (unless trusted).

    Returns what the registry stores in ``extra`` about the weights and the trust decision.
    """
    scan = scan_weights(folder)
    if scan.safetensors:
        info: dict[str, Any] = {"weights_format": "safetensors"}
        if scan.pickle:
            info["ignored_pickle_files"] = scan.pickle  # loaders use the safetensors files
        return info
    if scan.pickle:
        if not trust_pickle:
            raise UnsafeWeightsError(
                f"{folder} holds only pickle weights ({', '.join(scan.pickle[:5])}). "
                "Pickle files can run arbitrary code when they are loaded, so DemoAI does not "
                "import them silently.",
                "Convert the weights to safetensors with a tool you trust and import that folder, "
                "or, if you trust where this model came from, import it again with "
                "--trust-pickle (trust_pickle=True); it will then be loaded with weights_only=True.",
            )
        return {
            "weights_format": "pickle",
            "trust_pickle": {
                "trusted": True,
                "decided_at": time.time(),
                "files": scan.pickle,
                "load_with": "torch.load(weights_only=True)",
            },
        }
    if scan.gguf:
        raise DemoAIError(
            f"{folder} holds GGUF files ({', '.join(scan.gguf[:5])}), not a Hugging Face folder.",
            "Import the .gguf file itself.",
        )
    raise DemoAIError(
        f"{folder} holds no model weights (no .safetensors files).",
        "Choose the folder that contains the model's weights, or finish downloading them.",
    )
