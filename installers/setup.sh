#!/usr/bin/env bash
# Installs what is missing for DemoAI into ./.venv. Idempotent: a second run
# with nothing changed returns in well under a second.
#
#   installers/setup.sh            # app + test tools
#
# Environment knobs:
#   DEMOAI_PYTHON       the interpreter to build the venv from (default python3.11, then python3)
#   DEMOAI_WHEEL_CACHE  where the portable llama-cpp-python wheel is kept
#                       (default ~/.cache/demoai/wheels)
#   DEMOAI_CUDA=1|0     force the CUDA (unpinned torch) or CPU (torch==2.13.0) path
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
venv="$here/.venv"
log() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages Qt and the sandbox need (only when missing and we are root)
# bubblewrap: the run_python agent tool's sandbox (docs/security.md); without it
# the tool is unavailable, never weaker.
qt_debs=(bubblewrap libegl1 libgl1 libopengl0 libglx0 libfontconfig1 libfreetype6 libxkbcommon0
  libxkbcommon-x11-0 libdbus-1-3 libglib2.0-0 libx11-6 libx11-xcb1 libxcb1 libxcb-cursor0
  libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-randr0 libxcb-render0
  libxcb-render-util0 libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-util1 libxcb-xfixes0
  libxcb-xkb1 ${DEMOAI_EXTRA_DEBS:-})
if command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for p in "${qt_debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      log "installing Debian packages: ${missing[*]}"
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      log "missing Debian packages (run as root or install them): ${missing[*]}"
    fi
  fi
fi

# --- Python and the venv ------------------------------------------------------
py=${DEMOAI_PYTHON:-}
if [ -z "$py" ]; then
  for c in python3.11 python3; do command -v "$c" >/dev/null 2>&1 && { py=$c; break; }; done
fi
[ -n "$py" ] || { echo "DemoAI needs Python 3.11 or newer: install python3.11 and python3.11-venv" >&2; exit 1; }
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "DemoAI needs Python >= 3.11 ($py is older)" >&2; exit 1; }
[ -x "$venv/bin/python" ] || { log "creating $venv"; "$py" -m venv "$venv"; }
vpy="$venv/bin/python"

# --- Which torch ----------------------------------------------------------------
cuda=${DEMOAI_CUDA:-}
if [ -z "$cuda" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then cuda=1; else cuda=0; fi
fi
constraints=(-c installers/constraints.txt)
[ "$cuda" = 1 ] || constraints+=(-c installers/constraints-cpu.txt)

# --- Up to date already? ------------------------------------------------------------
stamp_src=$(cat pyproject.toml installers/constraints.txt installers/constraints-cpu.txt installers/setup.sh; echo "cuda=$cuda")
stamp=$(printf '%s' "$stamp_src" | sha256sum | cut -c1-16)
if [ -f "$venv/.demoai-stamp" ] && [ "$(cat "$venv/.demoai-stamp")" = "$stamp" ]; then
  exit 0
fi

# --- llama-cpp-python, built once, portably, into a cache keyed by version+flags
llama_ver=$(sed -n 's/^llama-cpp-python==//p' installers/constraints.txt)
cmake_args="-DGGML_NATIVE=OFF"
[ "$cuda" = 1 ] && cmake_args="$cmake_args -DGGML_CUDA=ON"
key=$(printf '%s|%s|%s' "$llama_ver" "$cmake_args" "$("$vpy" -c 'import sys,platform;print(sys.version_info[:2],platform.machine())')" | sha256sum | cut -c1-12)
cache=${DEMOAI_WHEEL_CACHE:-$HOME/.cache/demoai/wheels}/llama_cpp_python-$llama_ver-$key
mkdir -p "$cache"
if [ ! -f "$cache/sdist/llama_cpp_python-$llama_ver.tar.gz" ]; then
  log "downloading the llama-cpp-python $llama_ver source (it also carries llama.cpp's GGUF converter)"
  "$vpy" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$llama_ver" -d "$cache/sdist" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  [ -f "$cache/sdist/llama_cpp_python-$llama_ver.tar.gz" ] || { echo "[setup] could not download the llama-cpp-python source" >&2; exit 1; }
fi
if ! ls "$cache"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  log "building llama-cpp-python $llama_ver with CMAKE_ARGS='$cmake_args' (5-6 minutes, once)"
  "$vpy" -m pip install -q --upgrade pip wheel setuptools >/dev/null 2>&1
  CMAKE_ARGS="$cmake_args" "$vpy" -m pip wheel -q --no-cache-dir --no-deps \
    -w "$cache/build" "$cache/sdist/llama_cpp_python-$llama_ver.tar.gz" >"$cache/build.log" 2>&1 \
    || { tail -40 "$cache/build.log" >&2; echo "[setup] llama-cpp-python build failed; log: $cache/build.log" >&2; exit 1; }
  mv "$cache"/build/llama_cpp_python-*.whl "$cache/"
fi
# The converter lives in the sdist; unpack it once beside the wheel.
if [ ! -f "$cache/src/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  rm -rf "$cache/src.tmp" && mkdir -p "$cache/src.tmp"
  tar -xzf "$cache/sdist/llama_cpp_python-$llama_ver.tar.gz" -C "$cache/src.tmp" --strip-components=1
  rm -rf "$cache/src" && mv "$cache/src.tmp" "$cache/src"
fi

log "installing DemoAI and its dependencies into $venv (torch: $([ "$cuda" = 1 ] && echo CUDA build || echo CPU 2.13.0))"
piplog="$venv/setup-pip.log"
pipq() { "$vpy" -m pip install -q "$@" >>"$piplog" 2>&1 || { tail -40 "$piplog" >&2; echo "[setup] pip failed; full log: $piplog" >&2; exit 1; }; }
: >"$piplog"
pipq "$cache"/llama_cpp_python-*.whl "${constraints[@]}"
pipq -e ".[dev]" "${constraints[@]}"
# Where the matching llama.cpp source (converter + gguf-py) lives, for exports.
printf '%s\n' "$cache/src/vendor/llama.cpp" > "$venv/.demoai-llama-cpp-src"
# llama-server for Docker bundles and bench/ (app/core/export/llama_tools.py): built once
# from the same llama.cpp, portable and static, cached in ~/.cache/demoai/llama-tools.
if ! "$vpy" -c 'import sys; from app.core.export.llama_tools import find_llama_tool as f; sys.exit(f("llama-server") is None)' 2>/dev/null; then
  log "building llama-server from the same llama.cpp for Docker bundles (minutes, once)"
  "$vpy" -c 'from app.core.export.llama_tools import llama_tool; llama_tool("llama-server")' >&2 \
    || log "warning: llama-server did not build; a Docker bundle export will try again"
fi
printf '%s' "$stamp" > "$venv/.demoai-stamp"
log "done"
