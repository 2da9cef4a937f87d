"""``SHA256SUMS`` files (the ``sha256sum`` format) for export folders and packages."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from app.core.errors import DemoAIError
from app.core.store.files import atomic_write_text, sha256_file

SUMS_NAME = "SHA256SUMS"


class ChecksumError(DemoAIError):
    """A file does not match its SHA256SUMS line, is missing, or is not listed."""


@dataclass
class ChecksumReport:
    """What :func:`verify_sums` found."""

    checked: int
    mismatched: list[str]
    missing: list[str]
    unlisted: list[str]

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.unlisted)

    def describe(self) -> str:
        """Which files are wrong, e.g. 'modified: a; missing: b'."""
        parts = []
        if self.mismatched:
            parts.append("modified: " + ", ".join(self.mismatched))
        if self.missing:
            parts.append("missing: " + ", ".join(self.missing))
        if self.unlisted:
            parts.append("not listed: " + ", ".join(self.unlisted))
        return "; ".join(parts)


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file under ``root`` except SHA256SUMS, sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            if rel != SUMS_NAME and p.is_file() and not p.is_symlink():
                out.append(rel)
    return sorted(out)


def write_sums(root: Path) -> dict[str, str]:
    """Hash every file under ``root`` and write ``root/SHA256SUMS``; returns relpath -> sha256."""
    sums = {rel: sha256_file(root / rel) for rel in list_files(root)}
    atomic_write_text(root / SUMS_NAME, "".join(f"{h}  {rel}\n" for rel, h in sums.items()))
    return sums


def read_sums(path: Path) -> dict[str, str]:
    """Parse a SHA256SUMS file (``<hex>  <path>`` or ``<hex> *<path>`` lines)."""
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition(" ")
        rel = rel[1:] if rel[:1] in (" ", "*") else rel
        if not sep or len(digest) != 64 or not rel:
            raise ChecksumError(f"{path}: line {n} is not '<sha256>  <file>'.")
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ChecksumError(f"{path}: line {n} names a path outside the folder: {rel}")
        out[rel] = digest.lower()
    return out


def verify_sums(root: Path, *, allow_unlisted: bool = False) -> ChecksumReport:
    """Check every file under ``root`` against ``root/SHA256SUMS``."""
    sums_path = root / SUMS_NAME
    if not sums_path.is_file():
        raise ChecksumError(f"{root} has no {SUMS_NAME} file.")
    sums = read_sums(sums_path)
    present = set(list_files(root))
    mismatched, missing = [], []
    for rel, digest in sums.items():
        if rel not in present:
            missing.append(rel)
        elif sha256_file(root / rel) != digest:
            mismatched.append(rel)
    unlisted = [] if allow_unlisted else sorted(present - set(sums))
    return ChecksumReport(len(sums), mismatched, missing, unlisted)


def check_sums(root: Path, *, allow_unlisted: bool = False) -> ChecksumReport:
    """:func:`verify_sums`, raising :class:`ChecksumError` naming the bad files."""
    rep = verify_sums(root, allow_unlisted=allow_unlisted)
    if not rep.ok:
        raise ChecksumError(
            f"SHA256SUMS verification failed in {root} ({rep.describe()}).",
            "The files were changed or damaged after export; get a fresh copy.",
        )
    return rep
