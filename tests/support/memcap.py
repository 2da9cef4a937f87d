"""Run one claimed job in this process under a real memory cap (tests only).

    python -m tests.support.memcap JOB_ID --workspace DIR --headroom-mb N

This is ``python -m app.workers.run JOB_ID --workspace DIR`` (the job's real
entry point, which the supervisor starts) with one addition: as soon as the
training session has loaded its model and data, ``RLIMIT_DATA`` is set to the
process's data size at that moment plus N MiB. Everything after that (the
steps, evaluation, checkpoints, the adapter, the manifest) runs under the cap,
so an allocation beyond it fails in the allocator ("DefaultCPUAllocator: can't
allocate memory") exactly as on a machine with that little free memory.
Nothing of the job is replaced: the session class is wrapped only to learn
when loading is over.

Since Linux 4.7 ``RLIMIT_DATA`` covers private writable mappings (the heap and
anonymous ``mmap``, where torch's CPU tensors live) but not the shared
libraries, so the cap measures what training allocates, not what was imported.
The limit is printed as one JSON line starting with ``memcap:``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from typing import Any


def data_bytes() -> int:
    """VmData of this process (private writable mappings), in bytes."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def install_cap(headroom: int) -> None:
    """Cap RLIMIT_DATA at (data size when the session is loaded) + ``headroom`` bytes."""
    from app.core.train import loop

    original_init = loop.TrainSession.__init__

    def init_then_cap(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        used = data_bytes()
        cap = used + headroom
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
        print("memcap: " + json.dumps({"data_at_load": used, "cap": cap}), flush=True)

    loop.TrainSession.__init__ = init_then_cap  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.support.memcap")
    parser.add_argument("job_id")
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--headroom-mb", type=int, required=True)
    args = parser.parse_args(argv)
    install_cap(args.headroom_mb * 2**20)
    from app.workers.run import main as run_job

    return run_job([args.job_id, "--workspace", args.workspace])


if __name__ == "__main__":
    sys.exit(main())
