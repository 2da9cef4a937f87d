"""Workspace backup and restore against a plain tar of the same folder, in the same run.

A workspace with a copied 'model' (random bytes), the same file twice under runs/ (stored
once) and a few dataset versions. Baseline: ``tarfile`` writing the folder as it is (no
hashing, no database snapshot) and extracting it. DemoAI: ``create_backup`` (two reads per
stored file: hash, then copy with a second hash), ``verify_backup``, ``restore_backup``
(verify everything, then write). Prints medians of --runs and the ratios.

    .venv/bin/python bench/backup.py [--runs 3] [--mb 200]
"""

# ruff: noqa: E402  (the imports follow the sys.path fix below)
from __future__ import annotations

import sys
from pathlib import Path

# Imports resolve from the repository root (app.*), not from this folder.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import os
import shutil
import statistics
import tarfile
import tempfile
import time


def build(root: Path, mb: int) -> None:
    import pyarrow as pa

    from app.core.data.store import DatasetStore
    from app.core.workspace import Workspace

    ws = Workspace.open(root)
    model = ws.models_dir / "m" / "model.bin"
    model.parent.mkdir(parents=True)
    with open(model, "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))
    run = ws.run_dir("j")
    run.mkdir(parents=True)
    shutil.copyfile(model, run / "copy-of-model.bin")  # stored once by the backup
    store = DatasetStore(ws)
    store.create_dataset(
        "d", pa.Table.from_pylist([{"n": i, "t": f"row {i}"} for i in range(50_000)])
    )
    for k in range(3):
        store.create_version(
            "d",
            pa.Table.from_pylist([{"n": i * k, "t": f"row {i}"} for i in range(50_000)]),
            message=str(k),
            operation={"name": "bench"},
        )
    ws.close()


def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def plain_tar(root: Path, out: Path) -> None:
    with tarfile.open(out, "w") as tar:
        tar.add(root, arcname="ws")


def plain_untar(src: Path, dest: Path) -> None:
    with tarfile.open(src) as tar:
        tar.extractall(dest, filter="data")


def main() -> None:
    from app.core.backup import create_backup, restore_backup, verify_backup

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mb", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    try:
        root = tmp / "ws"
        build(root, args.mb)
        res: dict[str, list[float]] = {
            k: [] for k in ("tar", "untar", "create", "verify", "restore")
        }
        size_tar = size_backup = 0
        for i in range(args.runs):
            plain, out = tmp / f"plain{i}.tar", tmp / f"backup{i}.tar"
            res["tar"].append(timed(plain_tar, root, plain))
            res["create"].append(timed(create_backup, root, out))
            res["untar"].append(timed(plain_untar, plain, tmp / f"x{i}"))
            res["verify"].append(timed(verify_backup, out))
            res["restore"].append(timed(restore_backup, out, tmp / f"r{i}"))
            size_tar, size_backup = plain.stat().st_size, out.stat().st_size
            for p in (plain, out):
                p.unlink()
            shutil.rmtree(tmp / f"x{i}")
            shutil.rmtree(tmp / f"r{i}")
        med = {k: statistics.median(v) for k, v in res.items()}
        print(
            f"workspace: {args.mb} MiB model + a copy of it + 4 dataset versions; {args.runs} runs"
        )
        for k, v in med.items():
            print(f"  {k:8} median {v:6.2f} s")
        print(
            f"  size: plain tar {size_tar / 2**20:.0f} MiB, backup {size_backup / 2**20:.0f} MiB "
            f"({size_backup / size_tar:.2f}x)"
        )
        print(f"  create / tar     {med['create'] / med['tar']:.2f}x")
        print(f"  restore / untar  {med['restore'] / med['untar']:.2f}x (restore verifies first)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
