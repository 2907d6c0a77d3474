#!/usr/bin/env bash
# Installs the Debian packages the test tiers need but Python cannot provide: `prometheus` (a real
# Prometheus server for the metrics tier). Skips in well under a second when everything is installed.
# Runs apt-get as root directly, otherwise through sudo.
set -euo pipefail
PACKAGES=(prometheus)
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "system: ${PACKAGES[*]} already installed"; exit 0
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo -n); fi
export DEBIAN_FRONTEND=noninteractive
echo "system: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -q
# The package's service is not started here (no init system in CI containers); tests run prometheus themselves.
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
if command -v prometheus >/dev/null; then
  version=$(prometheus --version 2>&1)
  echo "${version%%$'\n'*}"
fi
