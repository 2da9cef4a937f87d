"""The bundle base image the offline installer carries: default choice, loading, clear errors.

No Docker engine needed: a stand-in ``docker`` on PATH answers like an engine with
no registry (``docker pull`` fails with the DNS error an air-gapped site sees).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

import pytest

from app.core.export import docker as dk

FAKE_DOCKER = """#!/bin/sh
state="{state}"
echo "$*" >> "$state/calls"
case "$1" in
  info) echo 27.5.1; exit 0 ;;
  image) [ -f "$state/loaded" ] && exit 0; echo "Error: No such image" >&2; exit 1 ;;
  pull) echo "Error response from daemon: Get https://registry-1.docker.io/v2/: dial tcp: lookup registry-1.docker.io: no such host" >&2; exit 1 ;;
  load) touch "$state/loaded"; echo "Loaded image: demoai/bookworm-python:3.11"; exit 0 ;;
esac
exit 3
"""


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Docker engine without a registry and without any image; returns its state folder."""
    state = tmp_path / "engine"
    state.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "docker"
    exe.write_text(FAKE_DOCKER.format(state=state))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return state


def _install_marker(prefix: Path, tag: str, tar: Path) -> None:
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / dk.INSTALLED_BASE_IMAGE_INFO).write_text(json.dumps({"tag": tag, "tar": str(tar)}))


def test_default_is_the_installers_image_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert dk.default_base_image() == dk.DEFAULT_BASE_IMAGE  # a dev venv: no installer
    _install_marker(tmp_path / "venv", dk.LOCAL_BASE_IMAGE, tmp_path / "base.tar")
    assert dk.default_base_image() == dk.LOCAL_BASE_IMAGE
    (tmp_path / "venv" / dk.INSTALLED_BASE_IMAGE_INFO).write_text("{not json")
    assert dk.default_base_image() == dk.DEFAULT_BASE_IMAGE  # damaged marker: never a crash


def test_without_a_base_image_the_error_names_the_load_command(
    engine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "devvenv"))
    with pytest.raises(dk.DockerError) as err:
        dk.ensure_base_image(dk.DEFAULT_BASE_IMAGE)
    text = str(err.value)
    assert "python:3.11-slim is not in the local Docker engine" in text
    assert f"docker load -i {dk.INSTALLER_IMAGE_TAR}" in text
    assert f"--base-image {dk.LOCAL_BASE_IMAGE}" in text
    assert "registry-1.docker.io" not in text  # Docker's raw DNS error is not the message
    assert "pull python:3.11-slim" in (engine / "calls").read_text()


def test_installed_tarball_is_loaded_when_the_engine_lacks_it(
    engine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = tmp_path / "share" / "demoai-base-image.tar"
    tar.parent.mkdir()
    tar.write_bytes(b"image")
    _install_marker(tmp_path / "venv", dk.LOCAL_BASE_IMAGE, tar)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    lines: list[str] = []
    dk.ensure_base_image(dk.LOCAL_BASE_IMAGE, log=lines.append)
    assert f"load -i {tar}" in (engine / "calls").read_text()
    assert any("loading the base image" in ln for ln in lines)


def test_other_tag_missing_points_at_the_installed_tarball(
    engine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = tmp_path / "base image.tar"  # a space: the command must stay copy-pasteable
    tar.write_bytes(b"image")
    _install_marker(tmp_path / "venv", dk.LOCAL_BASE_IMAGE, tar)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    with pytest.raises(dk.DockerError) as err:
        dk.ensure_base_image("registry.example/python:3.11-slim")
    assert f"docker load -i '{tar}'" in str(err.value)
    assert f"--base-image {dk.LOCAL_BASE_IMAGE}" in str(err.value)


def test_rootfs_image_tar_has_the_docker_save_layout(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr/bin").mkdir(parents=True)
    (rootfs / "usr/bin/python3").write_text("#!/bin/sh\n")
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tf:
        tf.add(rootfs, arcname=".")
    out = dk.rootfs_image_tar(layer, tmp_path / "image.tar")
    with tarfile.open(out) as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        (entry,) = manifest
        assert entry["RepoTags"] == [dk.LOCAL_BASE_IMAGE]
        config_bytes = tf.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
        layer_bytes = tf.extractfile(entry["Layers"][0]).read()  # type: ignore[union-attr]
    assert entry["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
    config = json.loads(config_bytes)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]
    assert layer_bytes == layer.read_bytes()
    assert config["os"] == "linux" and config["architecture"] in ("amd64", "arm64")
    assert not list(tmp_path.glob(".image.tar.tmp"))  # no half-written file left behind
