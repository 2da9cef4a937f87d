"""Weight-statistics benchmark: the inspector vs a plain numpy pass over the same safetensors file.

Writes a synthetic safetensors model (default 1 GB of tensors, Llama-like shapes, random
values), reads it once so both sides start from the page cache, then, each in a fresh
process so peak memory is its own, alternating, ``--runs`` times:

- the baseline: for each tensor, ``numpy.memmap`` the whole tensor, convert to float32
  and compute mean, std (float64), min, max and the L2 norm with numpy's own functions;
- ours: ``model_stats(open_tensors(path))`` without a cache (mean, std, min, max, L2,
  near-zero share, non-finite count and the 69-bin histogram per tensor, chunk by chunk).

Prints GB of tensors per second for each (median of the runs), the ratio ours/baseline
(goal >= 0.8x) and each process's peak RSS (goal for ours: under 1 GB whatever the size;
try ``--gb 4``).

    python bench/inspect_weights.py --gb 1 --dtype BF16 --runs 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generate(path: Path, gb: float, dtype: str, hidden: int = 2048) -> int:
    """A Llama-like safetensors file of about ``gb`` GB; returns the tensor bytes written."""
    import numpy as np

    width = {"F32": 4, "BF16": 2, "F16": 2}[dtype]
    inter = hidden * 11 // 4
    layer = [
        ("self_attn.q_proj.weight", (hidden, hidden)),
        ("self_attn.k_proj.weight", (hidden // 4, hidden)),
        ("self_attn.v_proj.weight", (hidden // 4, hidden)),
        ("self_attn.o_proj.weight", (hidden, hidden)),
        ("mlp.gate_proj.weight", (inter, hidden)),
        ("mlp.up_proj.weight", (inter, hidden)),
        ("mlp.down_proj.weight", (hidden, inter)),
        ("input_layernorm.weight", (hidden,)),
        ("post_attention_layernorm.weight", (hidden,)),
    ]
    per_layer = sum(int(np.prod(s)) for _, s in layer) * width
    n_layers = max(1, int(gb * 1e9 // per_layer))
    header: dict[str, object] = {}
    offset = 0
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for i in range(n_layers):
        for name, shape in layer:
            full = f"model.layers.{i}.{name}"
            n = int(np.prod(shape)) * width
            header[full] = {
                "dtype": dtype,
                "shape": list(shape),
                "data_offsets": [offset, offset + n],
            }
            shapes.append((full, shape))
            offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    block = rng.normal(0, 0.02, size=8 * 1024 * 1024).astype(np.float32)
    if dtype == "BF16":
        block_bytes = (block.view(np.uint32) >> 16).astype("<u2").tobytes()
    elif dtype == "F16":
        block_bytes = block.astype("<f2").tobytes()
    else:
        block_bytes = block.tobytes()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        left = offset
        while left > 0:
            chunk = block_bytes[: min(left, len(block_bytes))]
            fh.write(chunk)
            left -= len(chunk)
    return offset


def _baseline(path: str) -> None:
    import numpy as np

    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
    start = 8 + n
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, _ = info["data_offsets"]
        dt = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[info["dtype"]]
        m = np.memmap(path, dtype=dt, mode="r", offset=start + a, shape=tuple(info["shape"]))
        x = (
            (m.astype(np.uint32) << 16).view(np.float32)
            if info["dtype"] == "BF16"
            else np.asarray(m, dtype=np.float32)
        )
        out.append(
            (
                float(x.mean(dtype=np.float64)),
                float(x.std(dtype=np.float64)),
                float(x.min()),
                float(x.max()),
                float(np.linalg.norm(x.astype(np.float64))),
            )
        )
        del m, x
    assert out


def _ours(path: str) -> None:
    from app.core.inspect import open_tensors
    from app.core.inspect.stats import model_stats

    data = model_stats(open_tensors(path))
    assert data["tensors"] and not data["skipped"]


def child(which: str, path: str) -> None:
    t0 = time.perf_counter()
    {"baseline": _baseline, "ours": _ours}[which](path)
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": rss_mb}))


def run_child(which: str, path: Path) -> dict[str, float]:
    r = subprocess.run(
        [sys.executable, __file__, "--child", which, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    result: dict[str, float] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of the synthetic model")
    ap.add_argument("--dtype", choices=["F32", "BF16", "F16"], default="BF16")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="demoai-bench-inspect-") as tmp:
        path = Path(tmp) / "model.safetensors"
        nbytes = generate(path, args.gb, args.dtype)
        with open(path, "rb") as fh:  # into the page cache: both sides read from memory
            while fh.read(64 << 20):
                pass
        gb = nbytes / 1e9
        print(f"synthetic model: {gb:.2f} GB of {args.dtype} tensors, {args.runs} runs each")
        results: dict[str, list[dict[str, float]]] = {"baseline": [], "ours": []}
        for i in range(args.runs):
            for which in ("baseline", "ours") if i % 2 == 0 else ("ours", "baseline"):
                results[which].append(run_child(which, path))
        speed = {}
        for which, rows in results.items():
            secs = statistics.median(r["seconds"] for r in rows)
            rss = max(r["rss_mb"] for r in rows)
            speed[which] = gb / secs
            print(f"{which:9} {secs:7.2f} s  {speed[which]:6.2f} GB/s  peak RSS {rss:7.0f} MB")
        ratio = speed["ours"] / speed["baseline"]
        print(f"ratio ours/baseline: {ratio:.2f}x (goal >= 0.8x)")


if __name__ == "__main__":
    main()
