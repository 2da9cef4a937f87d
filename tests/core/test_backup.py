"""Workspace backups: round trip, damage refused, incremental chains, hostile tar files."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from app.core.backup import (
    BackupError,
    BaseMissingError,
    create_backup,
    last_backup,
    reminder_due,
    restore_backup,
    verify_backup,
    workspace_created_at,
)
from app.core.errors import ConfigError
from app.core.store.files import sha256_file
from app.core.workspace import Workspace


def _fill(ws: Workspace) -> None:
    from app.core.agents import AgentSpec, AgentStore
    from app.core.data.store import DatasetStore

    store = DatasetStore(ws)
    store.create_dataset("numbers", pa.Table.from_pylist([{"n": i} for i in range(500)]))
    run = ws.run_dir("job-1")
    run.mkdir(parents=True)
    (run / "log.txt").write_text("same text\n")
    (run / "copy.txt").write_text("same text\n")  # one content, stored once
    AgentStore(ws.db).save(AgentSpec(name="helper"))


def _flip(path: Path, member: str, at: int = 7) -> None:
    with tarfile.open(path) as tar:
        offset = tar.getmember(member).offset_data + at
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


def test_round_trip_restores_every_file_and_row(workspace: Workspace, tmp_path: Path) -> None:
    _fill(workspace)
    out = tmp_path / "b.tar"
    res = create_backup(workspace.root, out)
    assert res.files == 5 and res.deduplicated == 1  # parquet, settings, 2 run files, ...
    assert res.stored_blobs == res.files - 1
    names = tarfile.open(out).getnames()
    assert names[0] == "demoai.db" and names[-2:] == ["manifest.json", "SHA256SUMS"]
    assert last_backup(workspace.root)["id"] == res.id  # type: ignore[index]

    v = verify_backup(out)
    assert v.id == res.id and len(v.manifest["files"]) == res.files

    target = tmp_path / "restored"
    r = restore_backup(out, target)
    assert r.files == res.files
    for f in v.manifest["files"]:
        assert sha256_file(target / f["path"]) == f["sha256"]
    assert (target / "runs/job-1/copy.txt").read_text() == "same text\n"
    ws2 = Workspace.open(target, create=False)
    try:
        from app.core.agents import AgentStore
        from app.core.data.store import DatasetStore

        ds = DatasetStore(ws2)
        assert ds.read_table("numbers").num_rows == 500
        assert AgentStore(ws2.db).get("helper").version == 1
    finally:
        ws2.close()


def test_restore_refuses_a_non_empty_target(workspace: Workspace, tmp_path: Path) -> None:
    _fill(workspace)
    out = tmp_path / "b.tar"
    create_backup(workspace.root, out)
    target = tmp_path / "t"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        restore_backup(out, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("member", ["data/000001", "demoai.db", "manifest.json"])
def test_one_flipped_byte_is_refused_by_verify_and_restore(
    workspace: Workspace, tmp_path: Path, member: str
) -> None:
    _fill(workspace)
    out = tmp_path / "b.tar"
    create_backup(workspace.root, out)
    _flip(out, member)
    with pytest.raises(BackupError, match="damaged") as e:
        verify_backup(out)
    assert e.value.exit_code == 4
    target = tmp_path / "restored"
    with pytest.raises(BackupError, match="damaged"):
        restore_backup(out, target)
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".restored")]


def test_a_truncated_backup_is_refused(workspace: Workspace, tmp_path: Path) -> None:
    _fill(workspace)
    out = tmp_path / "b.tar"
    create_backup(workspace.root, out)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackupError):
        verify_backup(out)


def test_incremental_stores_only_the_new_version(workspace: Workspace, tmp_path: Path) -> None:
    from app.core.data.store import DatasetStore

    _fill(workspace)
    full = tmp_path / "full.tar"
    create_backup(workspace.root, full)
    store = DatasetStore(workspace)
    before = {v.hash for v in store.versions("numbers")}
    new = store.create_version(
        "numbers",
        pa.Table.from_pylist([{"n": i * 2} for i in range(500)]),
        message="doubled",
        operation={"name": "test"},
    )
    assert new.hash not in before
    version_dir = new.path.relative_to(workspace.root).as_posix()
    inc = tmp_path / "inc.tar"
    res = create_backup(workspace.root, inc, base=full)
    manifest = verify_backup(inc).manifest
    by_sha = {f["sha256"]: f["path"] for f in manifest["files"]}
    stored_paths = sorted(by_sha[sha] for sha in manifest["blobs"])
    assert stored_paths and all(p.startswith(version_dir + "/") for p in stored_paths)
    on_disk = sorted(
        p.relative_to(workspace.root).as_posix() for p in new.path.rglob("*") if p.is_file()
    )
    assert stored_paths == on_disk
    assert res.from_base == res.files - len(on_disk)
    assert manifest["base"]["file"] == "full.tar"

    restored = tmp_path / "restored"
    r = restore_backup(inc, restored)
    assert r.backups_read == 2
    for f in manifest["files"]:
        assert sha256_file(restored / f["path"]) == f["sha256"]

    # Without its base the incremental backup cannot be restored, and says why.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    full.rename(moved / "full.tar")
    with pytest.raises(BaseMissingError, match=r"needs its base full\.tar") as e:
        restore_backup(inc, tmp_path / "r2")
    assert e.value.exit_code == 5 and not (tmp_path / "r2").exists()
    # Told where it is, it restores.
    assert restore_backup(inc, tmp_path / "r3", bases=[moved / "full.tar"]).files == r.files


def test_external_models_are_listed_not_copied(
    workspace: Workspace, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    from app.core.models.registry import ModelRegistry

    rec = ModelRegistry(workspace).import_hf_folder(tiny_llama_dir, copy=False, name="tiny")
    res = create_backup(workspace.root, tmp_path / "b.tar")
    assert [e.id for e in res.external] == [rec.id]
    assert res.total_bytes < rec.size_bytes  # the weights were not copied
    m = verify_backup(tmp_path / "b.tar").manifest
    assert m["external_models"][0]["path"] == str(tiny_llama_dir)


# -- hostile tar files ---------------------------------------------------------------------
def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if ti.isreg() else None)


def _reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


def _valid_members(files: list[dict[str, Any]], blobs: dict[str, bytes]) -> list[Any]:
    """A backup that passes every checksum: only its content is hostile."""
    db = b"not really a database"
    members = [_reg("demoai.db", db)]
    blob_table = {}
    for i, (sha, data) in enumerate(blobs.items(), 1):
        members.append(_reg(f"data/{i:06d}", data))
        blob_table[sha] = {"member": f"data/{i:06d}", "size": len(data)}
    manifest = {
        "format": 1,
        "kind": "demoai-workspace-backup",
        "id": "0" * 32,
        "base": None,
        "database": {
            "member": "demoai.db",
            "sha256": hashlib.sha256(db).hexdigest(),
            "size": len(db),
        },
        "files": files,
        "blobs": blob_table,
    }
    members.append(_reg("manifest.json", json.dumps(manifest).encode()))
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  {ti.name}\n" for ti, d in members).encode()
    members.append(_reg("SHA256SUMS", sums))
    return members


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = target
    return ti, b""


@pytest.mark.parametrize(
    "case",
    ["dotdot_member", "absolute_member", "symlink_member", "hardlink_member", "device_member",
     "dotdot_path", "absolute_path", "oversized_member"],
)  # fmt: skip
def test_a_malicious_backup_is_refused_before_anything_is_written(
    tmp_path: Path, case: str
) -> None:
    evil = b"owned"
    sha = hashlib.sha256(evil).hexdigest()
    good = _valid_members([{"path": "runs/x.txt", "size": 5, "sha256": sha}], {sha: evil})
    if case == "dotdot_member":
        members = [_reg("../x", evil), *good]
    elif case == "absolute_member":
        members = [_reg(str(tmp_path / "abs.txt"), evil), *good]
    elif case == "symlink_member":
        members = [*good[:1], _link("data/000009", "/etc/passwd", tarfile.SYMTYPE), *good[1:]]
    elif case == "hardlink_member":
        members = [*good[:1], _link("data/000009", "demoai.db", tarfile.LNKTYPE), *good[1:]]
    elif case == "device_member":
        dev = tarfile.TarInfo("data/000009")
        dev.type = tarfile.CHRTYPE
        members = [*good[:1], (dev, b""), *good[1:]]
    elif case == "dotdot_path":
        members = _valid_members([{"path": "../x", "size": 5, "sha256": sha}], {sha: evil})
    elif case == "absolute_path":
        members = _valid_members(
            [{"path": str(tmp_path / "abs.txt"), "size": 5, "sha256": sha}], {sha: evil}
        )
    else:  # a member whose header claims more bytes than the file holds
        members = good
    out = tmp_path / "evil.tar"
    _tar_with(out, members)
    if case == "oversized_member":
        with tarfile.open(out) as tar:
            ti = tar.getmember("data/000001")
        raw = bytearray(out.read_bytes())
        hdr = ti.offset  # rewrite the size field (octal, 12 bytes at 124) and its checksum
        raw[hdr + 124 : hdr + 136] = b"%011o\0" % (1 << 30)
        raw[hdr + 148 : hdr + 156] = b" " * 8
        raw[hdr + 148 : hdr + 156] = b"%06o\0 " % sum(raw[hdr : hdr + 512])
        out.write_bytes(bytes(raw))
    why = {
        "dotdot_member": "unsafe path",
        "absolute_member": "unsafe path",
        "dotdot_path": "unsafe or invalid path",
        "absolute_path": "unsafe or invalid path",
        "oversized_member": "larger than the file",
    }.get(case, "not a regular file")
    target = tmp_path / "restored"
    with pytest.raises(BackupError, match=why):
        verify_backup(out)
    with pytest.raises(BackupError, match=why):
        restore_backup(out, target)
    assert not target.exists()
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
    assert not (tmp_path / "abs.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar"]


def test_reminder_follows_the_setting_and_the_last_backup(
    workspace: Workspace, tmp_path: Path
) -> None:
    root = workspace.root
    assert workspace.settings.backup_reminder_days == 7
    created = workspace_created_at(workspace.db)
    assert created is not None and abs(created - time.time()) < 600
    assert not reminder_due(root, 7, created_at=created)  # a new workspace: not yet
    assert reminder_due(root, 7, now=time.time() + 8 * 86400, created_at=created)
    assert not reminder_due(root, 0, now=time.time() + 8 * 86400, created_at=created)  # off
    create_backup(root, tmp_path / "b.tar")
    assert not reminder_due(root, 7)
    assert reminder_due(root, 7, now=time.time() + 8 * 86400)
    assert not reminder_due(root, 30, now=time.time() + 8 * 86400)


# -- the command line -----------------------------------------------------------------------
def _cli(*argv: str) -> int:
    from app.cli.main import main

    return main(list(argv))


def test_cli_create_verify_restore_and_refusals(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(workspace)
    ws = str(workspace.root)
    out = tmp_path / "b.tar"
    assert _cli("--workspace", ws, "backup", "create", "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert f"Backup written: {out}" in text and "1 duplicate(s) stored once" in text
    assert _cli("backup", "verify", str(out)) == 0
    assert "every checksum matches" in capsys.readouterr().out

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("x")
    assert _cli("backup", "restore", str(out), "--workspace", str(busy)) == 2
    assert "not an empty folder" in capsys.readouterr().err

    _flip(out, "data/000002")
    assert _cli("backup", "verify", str(out)) == 4
    err = capsys.readouterr().err
    assert "damaged" in err and "data/000002 does not match its checksum" in err
    target = tmp_path / "new"
    assert _cli("backup", "restore", str(out), "--workspace", str(target)) == 4
    assert "Nothing was written" in capsys.readouterr().err and not target.exists()
    assert _cli("backup", "verify", str(tmp_path / "nope.tar")) == 2


def test_a_checksummed_backup_with_a_bad_database_is_refused(tmp_path: Path) -> None:
    data = b"fine"
    sha = hashlib.sha256(data).hexdigest()
    out = tmp_path / "evil.tar"
    _tar_with(out, _valid_members([{"path": "runs/a.txt", "size": 4, "sha256": sha}], {sha: data}))
    verify_backup(out)  # every checksum matches: only restoring finds the database unsound
    with pytest.raises(BackupError, match="not a sound SQLite database"):
        restore_backup(out, tmp_path / "restored")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar"]


def test_a_cancelled_backup_leaves_nothing(workspace: Workspace, tmp_path: Path) -> None:
    _fill(workspace)
    calls = 0

    class Stop(Exception):
        pass

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Stop

    out = tmp_path / "out" / "b.tar"
    with pytest.raises(Stop):
        create_backup(workspace.root, out, check=check)
    assert calls == 3 and list(out.parent.iterdir()) == []  # no file, no temporaries
    assert last_backup(workspace.root) is None


def test_cli_incremental_backup_and_a_missing_base(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(workspace)
    ws = str(workspace.root)
    full, inc = tmp_path / "full.tar", tmp_path / "inc.tar"
    assert _cli("--workspace", ws, "backup", "create", "--out", str(full)) == 0
    (workspace.root / "runs" / "job-1" / "new.txt").write_text("new")
    assert _cli("--workspace", ws, "backup", "create", "--out", str(inc), "--base", str(full)) == 0
    text = capsys.readouterr().out
    assert "stored 1 distinct file(s)" in text and "restoring needs that file too" in text
    full.rename(tmp_path / "moved.tar")
    assert _cli("backup", "verify", str(inc)) == 5
    err = capsys.readouterr().err
    assert "is incremental: it needs its base full.tar" in err and "--base" in err
    assert _cli("backup", "verify", str(inc), "--base", str(tmp_path / "moved.tar")) == 0
    assert "base OK" in capsys.readouterr().out


def test_a_huge_tar_extension_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """tarfile reads a pax header whole: a 2 MiB one is refused by the pre-scan."""
    data = b"fine"
    sha = hashlib.sha256(data).hexdigest()
    members = _valid_members([{"path": "runs/a.txt", "size": 4, "sha256": sha}], {sha: data})
    members[1][0].pax_headers = {"comment": "x" * (2 << 20)}
    out = tmp_path / "evil.tar"
    _tar_with(out, members)
    with pytest.raises(BackupError, match="extension header is too large"):
        verify_backup(out)
    with pytest.raises(BackupError, match="extension header is too large"):
        restore_backup(out, tmp_path / "restored")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar"]
