"""Find models already on this machine (no network): the HF cache, LM Studio, Ollama, any folder.

Only cheap checks are made (file names, magic bytes, sizes); nothing is hashed or
imported. The user picks candidates and imports them by copy or reference.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.core.models.metadata import is_gguf_file
from app.core.models.safety import scan_weights

#: How deep a given folder is searched.
_MAX_DEPTH = 6


@dataclass
class Candidate:
    """A model found on disk that could be imported."""

    path: str
    format: str  # 'hf' | 'gguf' | 'lora'
    size_bytes: int
    source: str  # 'hf-cache' | 'lmstudio' | 'ollama' | 'folder'
    name: str
    already_registered: bool = False
    model_id: str | None = None  # the registered model, when already_registered
    hub_ref: str | None = None  # 'org/name@revision' for HF cache snapshots

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def default_gguf_dirs() -> list[tuple[str, Path]]:
    """Well-known model stores: LM Studio's folders and Ollama's blob store."""
    home = Path.home()
    return [
        ("lmstudio", home / ".lmstudio" / "models"),
        ("lmstudio", home / ".cache" / "lm-studio" / "models"),
        ("ollama", Path(os.environ.get("OLLAMA_MODELS", home / ".ollama" / "models")) / "blobs"),
    ]


def _dir_size(folder: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith("."):
                try:
                    total += (Path(dirpath) / fn).stat().st_size
                except OSError:
                    continue
    return total


def _hf_folder_format(folder: Path) -> str | None:
    """'hf' or 'lora' when ``folder`` looks like an importable HF folder, else None."""
    try:
        scan = scan_weights(folder)
    except OSError:
        return None
    if not (scan.safetensors or scan.pickle):
        return None
    if (folder / "adapter_config.json").is_file():
        return "lora"
    if (folder / "config.json").is_file():
        return "hf"
    return None


def scan_hf_cache(cache: Path | None = None) -> list[Candidate]:
    """Snapshots in the HF cache layout ``models--org--name/snapshots/<rev>/``."""
    root = cache or hf_cache_dir()
    out: list[Candidate] = []
    if not root.is_dir():
        return out
    for repo_dir in sorted(root.glob("models--*")):
        repo = repo_dir.name.removeprefix("models--").replace("--", "/")
        for snap in sorted((repo_dir / "snapshots").glob("*")):
            if not snap.is_dir():
                continue
            ref = f"{repo}@{snap.name}"
            fmt = _hf_folder_format(snap)
            if fmt:
                out.append(
                    Candidate(str(snap), fmt, _dir_size(snap), "hf-cache", repo, hub_ref=ref)
                )
            for g in sorted(snap.rglob("*.gguf")):
                if is_gguf_file(g):
                    out.append(
                        Candidate(str(g), "gguf", g.stat().st_size, "hf-cache", g.stem, hub_ref=ref)
                    )
    return out


def _ollama_names(blobs: Path) -> dict[str, str]:
    """Blob file name -> 'model:tag' from Ollama's manifests, where they can be read."""
    names: dict[str, str] = {}
    manifests = blobs.parent / "manifests"
    if not manifests.is_dir():
        return names
    for mf in manifests.rglob("*"):
        if not mf.is_file():
            continue
        try:
            data = json.loads(mf.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        for layer in data.get("layers", []) if isinstance(data, dict) else []:
            if isinstance(layer, dict) and layer.get("mediaType", "").endswith(".model"):
                digest = str(layer.get("digest", "")).replace(":", "-")
                names[digest] = f"{mf.parent.name}:{mf.name}"
    return names


def scan_gguf_folder(folder: Path, source: str = "folder") -> list[Candidate]:
    """GGUF files (by magic bytes, any extension) and HF folders under ``folder``."""
    out: list[Candidate] = []
    if folder.is_file():
        if is_gguf_file(folder):
            out.append(Candidate(str(folder), "gguf", folder.stat().st_size, source, folder.stem))
        return out
    if not folder.is_dir():
        return out
    ollama = _ollama_names(folder) if source == "ollama" else {}
    base_depth = len(folder.parts)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        d = Path(dirpath)
        dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
        if len(d.parts) - base_depth >= _MAX_DEPTH:
            dirnames[:] = []
        fmt = _hf_folder_format(d)
        if fmt:
            out.append(Candidate(str(d), fmt, _dir_size(d), source, d.name))
            dirnames[:] = []
            continue
        for fn in sorted(filenames):
            p = d / fn
            lower = fn.lower()
            # GGUF files are named *.gguf, except Ollama blobs (sha256-<hex>, no extension).
            if not (lower.endswith(".gguf") or (source == "ollama" and "." not in fn)):
                continue
            if fn.startswith(".") or not is_gguf_file(p):
                continue
            name = ollama.get(fn, p.stem)
            out.append(Candidate(str(p), "gguf", p.stat().st_size, source, name))
    return out


def discover(
    registry: Any | None = None,
    paths: Sequence[str | Path] = (),
    *,
    include_defaults: bool = True,
) -> list[Candidate]:
    """Candidates from the given paths and (by default) the HF cache, LM Studio and Ollama.

    With a ``ModelRegistry``, candidates already imported (by path) are marked.
    """
    found: list[Candidate] = []
    for p in paths:
        found += scan_gguf_folder(Path(p).expanduser().absolute())
    if include_defaults:
        found += scan_hf_cache()
        for source, folder in default_gguf_dirs():
            found += scan_gguf_folder(folder, source)
    unique: dict[str, Candidate] = {}
    for c in found:
        unique.setdefault(str(Path(c.path).resolve()), c)
    known = registry.registered_paths() if registry is not None else {}
    for resolved, c in unique.items():
        mid = known.get(resolved)
        if mid:
            c.already_registered, c.model_id = True, mid
    return list(unique.values())


def total_size(cands: Iterable[Candidate]) -> int:
    """Sum of candidate sizes."""
    return sum(c.size_bytes for c in cands)
