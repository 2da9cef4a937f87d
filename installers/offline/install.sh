#!/usr/bin/env bash
# DemoAI offline installer: installs from the files beside this script, never from the network.
#
#   ./install.sh                 install (root: /opt/demoai; otherwise ~/.local/share/demoai/app)
#   ./install.sh --upgrade       replace an installed DemoAI; workspaces are kept (they migrate
#                                when next opened)
#   ./install.sh --uninstall     remove everything this installer put on the machine; never a
#                                workspace (~/.local/share/DemoAI/workspace) or settings
#   ./install.sh --debs-only     (root) only install the missing Debian packages
#
# Options: --prefix DIR  --bin-dir DIR (where `demoai` goes on PATH)  --data-dir DIR (where
# applications/ and icons/ go: the menu entry)  --no-debs  --no-docker  --python PY
#
# Defaults as root: /opt/demoai, /usr/local/bin, /usr/local/share.
# Otherwise: ~/.local/share/demoai/app, ~/.local/bin, ${XDG_DATA_HOME:-~/.local/share}.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
say() { printf '[demoai-install] %s\n' "$*" >&2; }
die() { printf '[demoai-install] error: %s\n' "$*" >&2; exit 1; }
t0=$(date +%s)

mode=install made_cache="" prefix="" bin_dir="" data_dir="" with_debs=1 with_docker=1 py=""
while [ $# -gt 0 ]; do
  case "$1" in
    --upgrade) mode=upgrade; shift ;;
    --uninstall) mode=uninstall; shift ;;
    --debs-only) mode=debs; shift ;;
    --prefix) prefix=${2:?--prefix needs a folder}; shift 2 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a folder}; shift 2 ;;
    --data-dir) data_dir=${2:?--data-dir needs a folder}; shift 2 ;;
    --no-debs) with_debs=0; shift ;;
    --no-docker) with_docker=0; shift ;;
    --python) py=${2:?--python needs an interpreter}; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
if [ "$(id -u)" = 0 ]; then
  prefix=${prefix:-/opt/demoai} bin_dir=${bin_dir:-/usr/local/bin} data_dir=${data_dir:-/usr/local/share}
else
  prefix=${prefix:-$HOME/.local/share/demoai/app} bin_dir=${bin_dir:-$HOME/.local/bin}
  data_dir=${data_dir:-${XDG_DATA_HOME:-$HOME/.local/share}}
fi
prefix=$(realpath -m "$prefix") bin_dir=$(realpath -m "$bin_dir") data_dir=$(realpath -m "$data_dir")
record="$prefix/.installed"

# --- Uninstall: only what .installed lists, then the prefix -------------------------------
if [ "$mode" = uninstall ]; then
  [ -f "$record" ] || die "no DemoAI installed by this installer in $prefix (pass --prefix DIR)"
  while IFS=' ' read -r kind what; do
    case "$kind" in
      file) rm -f -- "$what" && say "removed $what" ;;
      made-cache) made_cache=$what ;;
      docker-image)
        if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
          docker image rm "$what" >/dev/null 2>&1 && say "removed the Docker image $what" \
            || say "kept the Docker image $what (a container or another image uses it)"
        fi ;;
    esac
  done <"$record"
  # The menu's MIME cache: gone when this install made it and no other entry is left,
  # otherwise rebuilt without DemoAI.
  apps=$(dirname "${made_cache:-$data_dir/applications/x}")
  if [ -n "${made_cache:-}" ] && ! ls "$apps"/*.desktop >/dev/null 2>&1; then
    rm -f -- "$made_cache"
  elif command -v update-desktop-database >/dev/null && [ -d "$apps" ]; then
    update-desktop-database -q "$apps" 2>/dev/null || true
  fi
  rm -rf -- "$prefix"
  say "DemoAI is uninstalled. Workspaces and settings were kept (default: ~/.local/share/DemoAI)."
  exit 0
fi

# --- Verify every file against SHA256SUMS (and refuse unlisted ones pip or dpkg would pick up)
[ -f "$src/SHA256SUMS" ] || die "SHA256SUMS is missing beside install.sh: the installer is incomplete"
say "verifying SHA256SUMS"
(cd "$src" && sha256sum --check --quiet --strict SHA256SUMS) >&2 \
  || die "files do not match SHA256SUMS (listed above): the installer was damaged or modified; copy it again"
extra=$(cd "$src" && comm -13 <(sed 's/^[0-9a-f]*  //' SHA256SUMS | sort) \
  <(find wheels debs docker models share -type f 2>/dev/null | sort))
[ -z "$extra" ] || die "files not listed in SHA256SUMS: $extra (remove them or copy the installer again)"
version=$(sed -n 's/.*"version": "\([^"]*\)".*/\1/p' "$src/installer.json")
pyver=$(sed -n 's/.*"python": "\([^"]*\)".*/\1/p' "$src/installer.json")

# --- Debian packages: install the missing ones from debs/ (root), or say which are missing --
install_debs() {
  local missing=() files=() f p
  for f in "$src"/debs/*.deb; do
    [ -e "$f" ] || continue
    p=$(dpkg-deb -f "$f" Package)
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || files+=("$f")
  done
  if [ ${#files[@]} -gt 0 ]; then
    say "installing ${#files[@]} Debian packages from debs/"
    if DEBIAN_FRONTEND=noninteractive dpkg -i "${files[@]}" >"$prefix.dpkg.log" 2>&1; then
      rm -f "$prefix.dpkg.log"
    else
      # A package that needs a newer base-system package than this machine has stays
      # unconfigured; what DemoAI needs is checked just below.
      say "dpkg reported problems (log: $prefix.dpkg.log):"
      grep -A2 '^dpkg: dependency problems' "$prefix.dpkg.log" | head -12 >&2 || true
    fi
  fi
  while read -r p; do
    [ -n "$p" ] || continue
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done <"$src/debs/REQUIRED"
  [ ${#missing[@]} -eq 0 ] || die "Debian packages DemoAI needs could not be installed: ${missing[*]} (log: $prefix.dpkg.log); the installer must be built on the same Debian release as this machine, or install them from the site's mirror"
}
if command -v dpkg-query >/dev/null; then
  if [ "$mode" = debs ]; then
    [ "$(id -u)" = 0 ] || die "--debs-only needs root: sudo $0 --debs-only"
    mkdir -p "$(dirname "$prefix")"; install_debs; exit 0
  fi
  if [ "$(id -u)" = 0 ] && [ "$with_debs" = 1 ]; then
    mkdir -p "$(dirname "$prefix")"; install_debs
  else
    missing=()
    while read -r p; do
      [ -n "$p" ] || continue
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done <"$src/debs/REQUIRED"
    [ ${#missing[@]} -eq 0 ] \
      || say "missing Debian packages (the window may not open): ${missing[*]}; an administrator can add them: sudo $src/install.sh --debs-only"
  fi
fi

# --- Python ----------------------------------------------------------------------------------
if [ -z "$py" ]; then
  for c in "python$pyver" python3; do command -v "$c" >/dev/null && { py=$(command -v "$c"); break; }; done
fi
[ -n "$py" ] || die "Python $pyver is needed: as root this installer adds it from debs/ (run it with sudo), or install python$pyver"
[ "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$pyver" ] \
  || die "$py is not Python $pyver, which the wheels are built for; pass --python /path/to/python$pyver"

# --- Already installed? ------------------------------------------------------------------------
if [ -e "$prefix/current" ] && [ "$mode" != upgrade ]; then
  die "DemoAI is already installed in $prefix. To replace it and keep the workspaces: $src/install.sh --upgrade"
fi
[ "$mode" = upgrade ] && [ ! -e "$prefix/current" ] && die "nothing to upgrade in $prefix: run $src/install.sh without --upgrade"

# --- The app: a new version folder; `current` switches to it only once it works ----------
mkdir -p "$prefix/versions"
vdir=$(mktemp -d "$prefix/versions/$version-XXXXXX")
chmod 755 "$vdir"
trap 'rm -rf "$vdir"' EXIT
say "installing DemoAI $version into $vdir (pip, offline)"
"$py" -m venv --without-pip "$vdir/venv"
pipw=$(ls "$src"/wheels/pip-*.whl | head -1)
# No index, no config, no cache: pip can only read wheels/. The index URL points at a closed
# loopback port, so an attempt would fail loudly instead of reaching out.
for v in $(env | sed -n 's/^\(PIP_[A-Za-z_]*\)=.*/\1/p'); do unset "$v"; done
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
  PIP_INDEX_URL=http://127.0.0.1:9/offline-install-must-not-use-an-index PIP_RETRIES=0 PIP_TIMEOUT=2
# The log stays (pip-install.log): it shows where every package came from.
"$vdir/venv/bin/python" "$pipw/pip" install --no-index --find-links "$src/wheels" \
  --no-warn-script-location "demoai==$version" pip >"$vdir/pip-install.log" 2>&1 \
  || { tail -30 "$vdir/pip-install.log" >&2; die "pip could not install from wheels/ (log above)"; }
mkdir -p "$vdir/share"
cp -a "$src/share/llama.cpp" "$vdir/share/llama.cpp"
cp "$src/share/demoai.svg" "$src/share/demoai.desktop" "$vdir/share/"
printf '%s\n' "$vdir/share/llama.cpp" >"$vdir/venv/.demoai-llama-cpp-src"
if [ -d "$src/models" ]; then cp -a "$src/models" "$vdir/share/models"; fi
tag=""
if [ -f "$src/docker/demoai-base-image.tar" ]; then
  mkdir -p "$vdir/share/docker"
  cp "$src/docker/demoai-base-image.tar" "$vdir/share/docker/"
  tag=$(cat "$src/docker/TAG")
  # What `demoai export docker` defaults to; it loads the tarball itself when needed.
  printf '{"tag": "%s", "tar": "%s"}\n' "$tag" "$prefix/current/share/docker/demoai-base-image.tar" \
    >"$vdir/venv/.demoai-base-image.json"
fi
cp "$src/installer.json" "$vdir/"
"$vdir/venv/bin/demoai" --help >/dev/null || die "the installed demoai does not start"

# Switch `current` atomically, then drop older versions.
old=$(readlink "$prefix/current" 2>/dev/null || true)
ln -sfn "versions/$(basename "$vdir")" "$prefix/current.new"
mv -T "$prefix/current.new" "$prefix/current"
trap - EXIT
[ -n "$old" ] && [ "$old" != "versions/$(basename "$vdir")" ] && rm -rf -- "${prefix:?}/$old"
cp "$src/install.sh" "$prefix/install.sh"   # for --uninstall without the installer files

# --- PATH, menu entry and icon (recorded for --uninstall) ------------------------------------
: >"$record.new"
mkdir -p "$bin_dir" "$data_dir/applications" "$data_dir/icons/hicolor/scalable/apps"
ln -sfn "$prefix/current/venv/bin/demoai" "$bin_dir/demoai"
echo "file $bin_dir/demoai" >>"$record.new"
sed "s|@DEMOAI@|$bin_dir/demoai|g" "$src/share/demoai.desktop" >"$data_dir/applications/demoai.desktop"
echo "file $data_dir/applications/demoai.desktop" >>"$record.new"
cp "$src/share/demoai.svg" "$data_dir/icons/hicolor/scalable/apps/demoai.svg"
echo "file $data_dir/icons/hicolor/scalable/apps/demoai.svg" >>"$record.new"
if command -v update-desktop-database >/dev/null; then
  mime="$data_dir/applications/mimeinfo.cache"
  if grep -q '^made-cache ' "$record" 2>/dev/null; then grep '^made-cache ' "$record" >>"$record.new"
  elif [ ! -e "$mime" ]; then echo "made-cache $mime" >>"$record.new"; fi
  update-desktop-database -q "$data_dir/applications" 2>/dev/null || true
fi
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q "$data_dir/icons/hicolor" 2>/dev/null || true

# --- Docker base image for bundles ---------------------------------------------------------------
grep '^docker-image ' "$record" 2>/dev/null >>"$record.new" || true
if [ -n "$tag" ] && [ "$with_docker" = 1 ] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  if docker image inspect "$tag" >/dev/null 2>&1; then
    say "the Docker engine already has $tag"
  else
    say "loading the Docker base image $tag"
    docker load -q -i "$vdir/share/docker/demoai-base-image.tar" >/dev/null
    grep -qx "docker-image $tag" "$record.new" || echo "docker-image $tag" >>"$record.new"
  fi
elif [ -n "$tag" ]; then
  say "no Docker engine here: Docker bundles will load $tag when first built (or: docker load -i $prefix/current/share/docker/demoai-base-image.tar)"
fi
mv "$record.new" "$record"

# --- Upgrade: migrate this user's workspace now (others migrate when they next open theirs) --
if [ "$mode" = upgrade ] && [ "$(id -u)" != 0 ]; then
  "$prefix/current/venv/bin/demoai" info >/dev/null 2>&1 || say "demoai info failed after the upgrade: run it to see why"
fi

say "installed DemoAI $version in $(( $(date +%s) - t0 )) s"
case ":$PATH:" in *":$bin_dir:"*) ;; *) say "add $bin_dir to PATH to run demoai from a shell" ;; esac
if [ -d "$vdir/share/models" ]; then
  for m in "$prefix"/current/share/models/*.gguf; do say "sample model: demoai models import $m"; done
fi
say "start it from the application menu (DemoAI) or with: $bin_dir/demoai"
