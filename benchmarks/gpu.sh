#!/usr/bin/env bash
# The SFT LoRA benchmark on one GPU (under 8 minutes on an H100/H200), on a machine with no package registry:
# the machine's own Python packages (PyTorch with CUDA, usually transformers, PEFT, accelerate) plus the wheels
# benchmarks/gpu_wheels.sh downloaded beforehand into benchmarks/wheels (carried along, under 64 MiB).
#
#   bash benchmarks/gpu.sh                       # writes benchmarks/results/gpu.{json,md}
#   bash benchmarks/gpu.sh --models /data/models # transformers folders smollm2/ and gemma3/ (else bundled/random)
#   bash benchmarks/gpu.sh --cpu --tiny          # the same script on the CPU, on a tiny model (a check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-benchmarks/wheels}
SITE=${SITE:-/tmp/tuneforge-gpu-site}
export PYTHONPATH="$SITE:$PWD/src:${PYTHONPATH:-}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "== the machine's packages"
"$PY" benchmarks/gpu.py --check || true
if [ -d "$WHEELS" ]; then
  mapfile -t NEED < <("$PY" benchmarks/gpu.py --plan-wheels "$WHEELS")
  if [ "${#NEED[@]}" -gt 0 ]; then
    echo "== installing ${#NEED[@]} carried wheels into $SITE (no index, no dependencies resolved online)"
    "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "${NEED[@]}"
  fi
fi
echo "== with the carried wheels"
"$PY" benchmarks/gpu.py --check
echo "== benchmark"
exec timeout 470 "$PY" benchmarks/gpu.py "$@"
