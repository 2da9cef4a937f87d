"""What hardware this machine has, found without importing torch.

GPU facts come from ``nvidia-smi`` when it exists; when it does not, the
report says why no GPU is used (no NVIDIA driver found) instead of nothing.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil


@dataclass
class GPUInfo:
    name: str
    memory_total_mb: int
    driver: str


@dataclass
class Hardware:
    cpu_threads: int
    cpu_model: str
    ram_total_bytes: int
    gpus: list[GPUInfo] = field(default_factory=list)
    gpu_note: str = ""

    def summary(self) -> str:
        """One line for the status bar."""
        ram = self.ram_total_bytes / 2**30
        if self.gpus:
            g = self.gpus[0]
            gpu = f"{g.name} {g.memory_total_mb / 1024:.0f} GiB"
        else:
            gpu = "no GPU"
        return f"{self.cpu_threads} CPU threads · {ram:.0f} GiB RAM · {gpu}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect_gpus(timeout: float = 5.0) -> tuple[list[GPUInfo], str]:
    """NVIDIA GPUs via nvidia-smi, and a note explaining an empty result."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return (
            [],
            "No NVIDIA driver found (nvidia-smi is missing): training and inference use the CPU.",
        )
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi did not answer ({exc}); the GPU is not used."
    if out.returncode != 0:
        return [], f"nvidia-smi failed: {out.stderr.strip() or out.stdout.strip()}"
    gpus: list[GPUInfo] = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            try:
                gpus.append(GPUInfo(parts[0], int(float(parts[1])), parts[2]))
            except ValueError:
                continue
    return gpus, "" if gpus else "nvidia-smi lists no GPU."


def detect_hardware(*, gpus: bool = True) -> Hardware:
    """CPU, RAM and (optionally) GPU facts."""
    found, note = detect_gpus() if gpus else ([], "")
    return Hardware(
        cpu_threads=os.cpu_count() or 1,
        cpu_model=_cpu_model(),
        ram_total_bytes=int(psutil.virtual_memory().total),
        gpus=found,
        gpu_note=note,
    )
