"""installers/offline/install.sh refuses a damaged installer before it changes anything.

A small stand-in installer folder (the real one is built by
tests/install/test_offline_installer.py): install.sh, installer.json, a wheel,
SHA256SUMS. Runs as any user; nothing is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from app.core.export.checksums import write_sums

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SH = ROOT / "installers" / "offline" / "install.sh"


@pytest.fixture
def installer(tmp_path: Path) -> Path:
    folder = tmp_path / "demoai-0.1.0-linux-x86_64-cpu"
    (folder / "wheels").mkdir(parents=True)
    (folder / "debs").mkdir()
    shutil.copy2(INSTALL_SH, folder / "install.sh")
    (folder / "installer.json").write_text('{"version": "0.1.0", "python": "3.11"}\n')
    (folder / "wheels" / "demoai-0.1.0-py3-none-any.whl").write_bytes(b"PK wheel bytes")
    (folder / "debs" / "REQUIRED").write_text("bubblewrap\n")
    write_sums(folder)
    return folder


def _run(folder: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    cmd = ["bash", str(folder / "install.sh"), "--prefix", str(tmp_path / "prefix"),
           "--bin-dir", str(tmp_path / "bin"), "--data-dir", str(tmp_path / "data"),
           "--no-debs", "--no-docker", *args]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_a_modified_file_stops_the_install(installer: Path, tmp_path: Path) -> None:
    (installer / "wheels" / "demoai-0.1.0-py3-none-any.whl").write_bytes(b"PK evil")
    proc = _run(installer, tmp_path)
    assert proc.returncode != 0
    assert "do not match SHA256SUMS" in proc.stderr
    assert "demoai-0.1.0-py3-none-any.whl" in proc.stderr  # says which file
    assert not (tmp_path / "prefix").exists() and not (tmp_path / "bin").exists()


def test_an_unlisted_wheel_stops_the_install(installer: Path, tmp_path: Path) -> None:
    # pip would pick a planted newer version from wheels/: refuse files SHA256SUMS lacks.
    (installer / "wheels" / "demoai-9.9.9-py3-none-any.whl").write_bytes(b"PK planted")
    proc = _run(installer, tmp_path)
    assert proc.returncode != 0
    assert "not listed in SHA256SUMS: wheels/demoai-9.9.9-py3-none-any.whl" in proc.stderr
    assert not (tmp_path / "prefix").exists()


def test_a_missing_sums_file_is_named(installer: Path, tmp_path: Path) -> None:
    (installer / "SHA256SUMS").unlink()
    proc = _run(installer, tmp_path)
    assert proc.returncode != 0 and "SHA256SUMS is missing" in proc.stderr


def test_uninstall_without_an_install_says_where_it_looked(installer: Path, tmp_path: Path) -> None:
    proc = _run(installer, tmp_path, "--uninstall")
    assert proc.returncode != 0
    assert f"no DemoAI installed by this installer in {tmp_path / 'prefix'}" in proc.stderr


def test_unknown_option_is_refused(installer: Path, tmp_path: Path) -> None:
    proc = _run(installer, tmp_path, "--frobnicate")
    assert proc.returncode != 0 and "unknown option --frobnicate" in proc.stderr
