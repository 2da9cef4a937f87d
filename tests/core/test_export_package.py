"""Model packages (round trip, tampering) and SHA256SUMS."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest


def _open_ws(path: Path) -> Any:
    from app.core.workspace import Workspace

    return Workspace.open(path)


def test_sha256sums_detect_a_modified_file(tmp_path: Path) -> None:
    from app.core.export.checksums import ChecksumError, check_sums, verify_sums, write_sums

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub" / "b.bin").write_bytes(b"\0" * 100)
    write_sums(tmp_path)
    assert verify_sums(tmp_path).ok
    (tmp_path / "sub" / "b.bin").write_bytes(b"\1" * 100)
    (tmp_path / "extra").write_text("x")
    rep = verify_sums(tmp_path)
    assert rep.mismatched == ["sub/b.bin"] and rep.unlisted == ["extra"]
    with pytest.raises(ChecksumError, match=r"modified: sub/b\.bin"):
        check_sums(tmp_path)


def test_package_round_trip_between_workspaces(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from app.core.export.package import export_package, import_package, is_package
    from app.core.models import ModelRegistry

    a = _open_ws(tmp_path / "a")
    b = _open_ws(tmp_path / "b")
    try:
        reg_a = ModelRegistry(a)
        base = reg_a.import_path(tiny_llama_dir, name="tiny-base")
        child_dir = tmp_path / "child"
        import shutil

        shutil.copytree(tiny_llama_dir, child_dir)
        (child_dir / "README.md").write_text("---\nlicense: apache-2.0\n---\n# child\n")
        child = reg_a.import_path(child_dir, name="tiny-child", tags=["demo"])
        reg_a.add_lineage(child.id, base.id, "fine-tuned-from", {"steps": 5})
        pkg = export_package(a, child.id, tmp_path / "out" / "child.tar.gz")
        assert is_package(pkg.path)
        names = tarfile.open(pkg.path).getnames()
        assert {"manifest.json", "MODEL_CARD.md", "SHA256SUMS"} <= set(names)

        rec = import_package(b, pkg.path)
        reg_b = ModelRegistry(b)
        assert rec.sha256 == child.sha256 and rec.name == "tiny-child" and rec.tags == ["demo"]
        assert rec.license == "apache-2.0"
        assert [f.__dict__ for f in reg_b.files(rec.id)] == [
            f.__dict__ for f in reg_a.files(child.id)
        ]
        (edge,) = reg_b.lineage(rec.id).parents
        assert edge.model_id == base.id and edge.relation == "fine-tuned-from"
        assert edge.name is None  # the parent is not in workspace b, recorded by id
        assert edge.details["parent_sha256"] == base.sha256 and edge.details["steps"] == 5
    finally:
        a.close()
        b.close()


def test_tampered_package_is_refused(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from app.core.export.checksums import ChecksumError
    from app.core.export.package import export_package, import_package
    from app.core.models import ModelRegistry

    a = _open_ws(tmp_path / "a")
    b = _open_ws(tmp_path / "b")
    try:
        rec = ModelRegistry(a).import_path(tiny_llama_dir)
        pkg = export_package(a, rec.id, tmp_path / "p.tar.gz").path
        # Rebuild the archive with one byte of the weights changed.
        work = tmp_path / "unpacked"
        with tarfile.open(pkg) as tf:
            tf.extractall(work, filter="data")
        w = work / "model" / "model.safetensors"
        data = bytearray(w.read_bytes())
        data[-1] ^= 0xFF
        w.write_bytes(bytes(data))
        bad = tmp_path / "bad.tar.gz"
        with tarfile.open(bad, "w:gz") as tf:
            for p in sorted(work.iterdir()):
                tf.add(p, arcname=p.name)
        with pytest.raises(ChecksumError, match=r"modified: model/model\.safetensors"):
            import_package(b, bad)
        assert ModelRegistry(b).list() == []
        assert not [p for p in b.models_dir.iterdir()] if b.models_dir.exists() else True
    finally:
        a.close()
        b.close()
