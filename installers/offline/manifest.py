"""Writes ``sbom.cdx.json`` (CycloneDX) and ``SHA256SUMS`` for an offline installer folder.

Run by installers/build-offline.sh with the dev venv: ``python manifest.py FOLDER``.
The SBOM lists every wheel (as bundles do, app/core/export/sbom.py), every Debian
package, the Docker base image and the optional sample model, each with its SHA-256.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app.core.export.checksums import write_sums  # noqa: E402
from app.core.export.sbom import cyclonedx_for_wheels  # noqa: E402
from app.core.store.files import atomic_write_json, sha256_file  # noqa: E402


def _deb_component(deb: Path) -> dict[str, Any]:
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
    name, version, arch = info["Package"], info["Version"], info["Architecture"]
    return {
        "type": "library",
        "bom-ref": f"pkg:deb/debian/{name}@{version}?arch={arch}",
        "name": name,
        "version": version,
        "purl": f"pkg:deb/debian/{name}@{version}?arch={arch}",
        "hashes": [{"alg": "SHA-256", "content": sha256_file(deb)}],
        "properties": [{"name": "demoai:deb", "value": deb.name}],
    }


def _file_component(path: Path, kind: str, name: str, version: str, desc: str) -> dict[str, Any]:
    return {
        "type": kind,
        "bom-ref": f"demoai:{path.name}",
        "name": name,
        "version": version,
        "description": desc,
        "hashes": [{"alg": "SHA-256", "content": sha256_file(path)}],
        "properties": [{"name": "demoai:file", "value": path.name}],
    }


def main(folder: Path) -> None:
    meta = json.loads((folder / "installer.json").read_text(encoding="utf-8"))
    extra = [_deb_component(d) for d in sorted((folder / "debs").glob("*.deb"))]
    image = folder / "docker" / "demoai-base-image.tar"
    if image.is_file():
        tag = (folder / "docker" / "TAG").read_text(encoding="utf-8").strip()
        extra.append(_file_component(image, "container", tag, "bookworm",
                                     "Docker base image for bundles (debootstrap minbase + python3)"))  # fmt: skip
    for gguf in sorted((folder / "models").glob("*.gguf")):
        extra.append(_file_component(gguf, "machine-learning-model", gguf.stem, "q4_k_m",
                                     "sample model (Gemma terms apply)"))  # fmt: skip
    conv = folder / "share" / "llama.cpp" / "convert_hf_to_gguf.py"
    if conv.is_file():
        extra.append(_file_component(conv, "application", "llama.cpp-convert_hf_to_gguf", "vendored",
                                     "llama.cpp's HF to GGUF converter (with conversion/ and gguf-py/)"))  # fmt: skip
    server = folder / "share" / "llama.cpp" / "bin" / "llama-server"
    if server.is_file():
        extra.append(_file_component(server, "application", "llama-server", "vendored",
                                     "llama.cpp's server, the engine of Docker bundles"))  # fmt: skip
    wheels = sorted((folder / "wheels").glob("*.whl"))
    sbom = cyclonedx_for_wheels(
        wheels, name=f"demoai-offline-installer-{meta['variant']}", version=meta["version"],
        extra=extra,
    )  # fmt: skip
    atomic_write_json(folder / "sbom.cdx.json", sbom)
    write_sums(folder)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
