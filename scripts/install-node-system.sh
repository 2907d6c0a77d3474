#!/usr/bin/env bash
# Installs the Debian packages a real kubelet node of the dev cluster needs (KUBELET_NODES=N, `make node`):
# containerd (the CRI runtime), runc, containernetworking-plugins (bridge, host-local, loopback under
# /usr/lib/cni), and, for building local images without Docker, mmdebstrap and busybox-static. Kept apart
# from scripts/install-system.sh so the other test tiers do not pull a container runtime.
# Skips in well under a second when everything is installed. Runs apt-get as root directly, otherwise
# through sudo. The packages' services are not started (no init system in CI containers): the dev cluster
# runs its own containerd with a private root, state and socket.
set -euo pipefail
PACKAGES=(containerd runc containernetworking-plugins mmdebstrap busybox-static)
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "node-system: ${PACKAGES[*]} already installed"; exit 0
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo -n); fi
export DEBIAN_FRONTEND=noninteractive
echo "node-system: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -q
# policy-rc.d-free: without an init system apt cannot start containerd's service, which is what we want.
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "node-system: $(containerd --version 2>&1 | head -n 1); $(runc --version 2>&1 | head -n 1)"
