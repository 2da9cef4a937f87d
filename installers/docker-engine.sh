#!/usr/bin/env bash
# Makes a Docker engine answer on this machine for the bundle tests (needs root):
# installs docker.io and debootstrap from Debian when missing and starts dockerd.
# No registry is needed: the tests build their base image with debootstrap.
set -uo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "[docker] not root: the Docker bundle tests will skip (and fail with CI=true)" >&2; exit 0
fi
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null 2>&1 \
    || { echo "[docker] could not install docker.io: the Docker bundle tests will skip (fail with CI=true)" >&2; exit 0; }
fi
nohup dockerd >/var/log/demoai-dockerd.log 2>&1 &
for _ in $(seq 120); do docker info >/dev/null 2>&1 && exit 0; sleep 0.5; done
echo "[docker] dockerd did not start (see /var/log/demoai-dockerd.log)" >&2
exit 0
