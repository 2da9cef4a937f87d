"""A CycloneDX (JSON) software bill of materials for the Python packages of a bundle."""

from __future__ import annotations

import email.parser
import re
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

from app.core.store.files import sha256_file

SPEC_VERSION = "1.5"


def wheel_metadata(wheel: Path) -> dict[str, Any]:
    """Name, version, summary and license of a wheel, read from its METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(
            (n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None
        )
        if meta_name is None:
            raise ValueError(f"{wheel.name} has no METADATA")
        raw = zf.read(meta_name).decode("utf-8", "replace")
    msg = email.parser.Parser().parsestr(raw, headersonly=True)
    license_ = msg.get("License-Expression") or msg.get("License") or ""
    if not license_ or len(license_) > 80:
        classifiers = [c for c in msg.get_all("Classifier") or [] if c.startswith("License ::")]
        license_ = classifiers[-1].split("::")[-1].strip() if classifiers else license_[:80]
    return {
        "name": msg.get("Name", ""),
        "version": msg.get("Version", ""),
        "summary": msg.get("Summary", ""),
        "license": license_.strip(),
    }


def _purl_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cyclonedx_for_wheels(
    wheels: list[Path], *, name: str, version: str, extra: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A CycloneDX document listing each wheel (purl, version, license, SHA-256)."""
    components: list[dict[str, Any]] = []
    for whl in sorted(wheels):
        meta = wheel_metadata(whl)
        comp: dict[str, Any] = {
            "type": "library",
            "bom-ref": f"pkg:pypi/{_purl_name(meta['name'])}@{meta['version']}",
            "name": meta["name"],
            "version": meta["version"],
            "purl": f"pkg:pypi/{_purl_name(meta['name'])}@{meta['version']}",
            "hashes": [{"alg": "SHA-256", "content": sha256_file(whl)}],
            "properties": [{"name": "demoai:wheel", "value": whl.name}],
        }
        if meta["summary"]:
            comp["description"] = meta["summary"]
        if meta["license"]:
            comp["licenses"] = [{"license": {"name": meta["license"]}}]
        components.append(comp)
    components.extend(extra or [])
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tools": {"components": [{"type": "application", "name": "demoai"}]},
            "component": {"type": "application", "name": name, "version": version},
        },
        "components": components,
    }
