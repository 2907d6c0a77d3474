#!/usr/bin/env bash
# Builds the kubelet for the dev cluster's real nodes (KUBELET_NODES=N) from the Go module proxy: there is
# no kubelet in Debian or PyPI and no download outside the package registries. tools/kubelet is a wrapper
# module around k8s.io/kubernetes/cmd/kubelet/app, pinned to the control plane's version
# (tools/controlplane/versions.env), so node and control plane always match.
#
# The binary lands in ${TIDAL_CACHE:-$HOME/.cache/tidal}/node/<key>/bin/kubelet, where <key> names the
# Kubernetes version plus a hash of tools/kubelet/**, versions.env, this script and the Go version, so a
# second run is a cache hit that takes well under a second. Run it after `make controlplane`: the kubelet
# shares most packages with the control plane, so with Go's build cache warm it compiles and links in
# about a minute instead of tens of minutes cold.
#
#   scripts/build-node.sh                 build if needed
#   scripts/build-node.sh --print-bin-dir print the bin directory for this checkout, build nothing
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=tools/kubelet
VERSIONS=tools/controlplane/versions.env
# shellcheck source=/dev/null
source "$VERSIONS"
CACHE=${TIDAL_CACHE:-$HOME/.cache/tidal}
JOBS=${GO_BUILD_JOBS:-2}

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  PATH=/usr/local/go/bin:$PATH
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-node: 'go' is not on PATH; install Go >= 1.25 (the build uses the Go module proxy)" >&2
  exit 1
fi
GO_VERSION=$(go env GOVERSION)
HASH=$( (find "$SRC" -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) -print0 \
          | sort -z | xargs -0 sha256sum; cat "$VERSIONS" scripts/build-node.sh; echo "$GO_VERSION") \
        | sha256sum | cut -c1-12)
KEY="kubelet-${KUBERNETES_VERSION}_${HASH}"
DEST="$CACHE/node/$KEY"
BIN="$DEST/bin"

if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "$BIN"; exit 0
fi

if [[ -f "$DEST/.complete" ]]; then
  ln -sfn "$KEY" "$CACHE/node/current"
  echo "node: cache hit, kubelet in $BIN"
  exit 0
fi

START=$(date +%s)
mkdir -p "$CACHE/node"
# One build at a time per cache (parallel `make` invocations wait, then find the cache filled).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE/node/.lock"
  flock 9
  if [[ -f "$DEST/.complete" ]]; then
    ln -sfn "$KEY" "$CACHE/node/current"
    echo "node: built by a concurrent run, kubelet in $BIN"
    exit 0
  fi
fi
echo "node: building $KEY into $DEST (about a minute with the control plane's Go build cache warm;" \
  "tens of minutes cold on 2 cores)"
TMP=$(mktemp -d "$CACHE/node/.build.XXXXXX")
chmod 755 "$TMP"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/bin"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath"

MAJOR=${KUBERNETES_VERSION#v}; MAJOR=${MAJOR%%.*}
MINOR=${KUBERNETES_VERSION#v*.}; MINOR=${MINOR%%.*}
# The same version stamp and fixed build date as the control plane (reproducible, cached link).
VERSION_LDFLAGS=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  VERSION_LDFLAGS+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$MAJOR -X $pkg.gitMinor=$MINOR"
  VERSION_LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

echo "node: building kubelet $KUBERNETES_VERSION"
(cd "$SRC" && go build -p "$JOBS" -ldflags "-s -w $VERSION_LDFLAGS" -o "$TMP/bin/kubelet" .)
"$TMP/bin/kubelet" --version
SECONDS_TAKEN=$(( $(date +%s) - START ))
cat > "$TMP/versions.env" <<EOV
KUBERNETES_VERSION=$KUBERNETES_VERSION
GO_VERSION=$GO_VERSION
BUILD_SECONDS=$SECONDS_TAKEN
EOV
touch "$TMP/.complete"
rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
ln -sfn "$KEY" "$CACHE/node/current"
echo "node: done in ${SECONDS_TAKEN}s, kubelet in $BIN"
