#!/usr/bin/env bash
# Builds the local Kubernetes control plane from the Go module proxy (there is no Docker, and no
# kube-apiserver in Debian or PyPI): one multi-call binary `kube` (kube-apiserver, kube-controller-manager,
# kube-scheduler, linked from k8s.io/kubernetes), `etcd` (go.etcd.io/etcd/server/v3) and `kwok`.
#
# Binaries land in ${TIDAL_CACHE:-$HOME/.cache/tidal}/controlplane/<key>/bin, where <key> names the pinned
# versions (tools/controlplane/versions.env) plus a hash of tools/controlplane/**, this script and the Go
# version, so a second run is a cache hit that takes well under a second. Go's own build cache
# (~/.cache/go-build) and module cache make a rebuild after a key change take minutes, not the cold
# tens of minutes.
#
#   scripts/build-controlplane.sh                 build if needed, print the bin directory
#   scripts/build-controlplane.sh --print-bin-dir print the bin directory for this checkout, build nothing
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SRC=tools/controlplane
# shellcheck source=/dev/null
source "$SRC/versions.env"
CACHE=${TIDAL_CACHE:-$HOME/.cache/tidal}
JOBS=${GO_BUILD_JOBS:-2}

if ! command -v go >/dev/null 2>&1; then
  echo "build-controlplane: 'go' is not on PATH; install Go >= 1.25 (the build uses the Go module proxy)" >&2
  exit 1
fi
GO_VERSION=$(go env GOVERSION)
HASH=$( (find "$SRC" -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' -o -name '*.env' \) -print0 \
          | sort -z | xargs -0 sha256sum; cat scripts/build-controlplane.sh; echo "$GO_VERSION") \
        | sha256sum | cut -c1-12)
KEY="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_${HASH}"
DEST="$CACHE/controlplane/$KEY"
BIN="$DEST/bin"

if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "$BIN"; exit 0
fi

if [[ -f "$DEST/.complete" ]]; then
  ln -sfn "$KEY" "$CACHE/controlplane/current"
  echo "controlplane: cache hit, binaries in $BIN"
  exit 0
fi

START=$(date +%s)
mkdir -p "$CACHE/controlplane"
# One build at a time per cache (parallel `make` invocations wait, then find the cache filled).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE/controlplane/.lock"
  flock 9
  if [[ -f "$DEST/.complete" ]]; then
    ln -sfn "$KEY" "$CACHE/controlplane/current"
    echo "controlplane: built by a concurrent run, binaries in $BIN"
    exit 0
  fi
fi
echo "controlplane: building $KEY into $DEST (cold: tens of minutes on 2 cores; Go's build cache makes rebuilds fast)"
TMP=$(mktemp -d "$CACHE/controlplane/.build.XXXXXX")
chmod 755 "$TMP"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/bin"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath"

MAJOR=${KUBERNETES_VERSION#v}; MAJOR=${MAJOR%%.*}
MINOR=${KUBERNETES_VERSION#v*.}; MINOR=${MINOR%%.*}
# A fixed build date keeps the link step reproducible (and cached by Go).
VERSION_LDFLAGS=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  VERSION_LDFLAGS+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$MAJOR -X $pkg.gitMinor=$MINOR"
  VERSION_LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

step() { echo "controlplane: $* ($(( $(date +%s) - START ))s elapsed)"; }

step "building etcd $ETCD_VERSION"
(cd "$SRC/etcd" && go build -p "$JOBS" -ldflags "-s -w" -o "$TMP/bin/etcd" .)

step "building kwok $KWOK_VERSION"
(cd "$SRC/kwok" && go build -p "$JOBS" -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
  -o "$TMP/bin/kwok" sigs.k8s.io/kwok/cmd/kwok)

step "building kube-apiserver, kube-controller-manager, kube-scheduler $KUBERNETES_VERSION (the long one)"
(cd "$SRC/kube" && go build -p "$JOBS" -ldflags "-s -w $VERSION_LDFLAGS" -o "$TMP/bin/kube" .)
for c in kube-apiserver kube-controller-manager kube-scheduler; do ln -s kube "$TMP/bin/$c"; done

"$TMP/bin/kube-apiserver" --version
# Not `| head -1`: with pipefail, etcd killed by SIGPIPE after head exits failed the build (exit 141).
"$TMP/bin/etcd" --version >"$TMP/etcd-version.txt"
sed -n 1p "$TMP/etcd-version.txt"
cat > "$TMP/versions.env" <<EOV
KUBERNETES_VERSION=$KUBERNETES_VERSION
ETCD_VERSION=$ETCD_VERSION
KWOK_VERSION=$KWOK_VERSION
GO_VERSION=$GO_VERSION
BUILD_SECONDS=$(( $(date +%s) - START ))
EOV
touch "$TMP/.complete"
rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
ln -sfn "$KEY" "$CACHE/controlplane/current"
step "done, binaries in $BIN"
