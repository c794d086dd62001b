#!/usr/bin/env bash
# Download, on a machine that reaches PyPI, the wheels benchmarks/gpu.sh carries to a GPU machine that does not:
# tuneforge's pure-Python dependencies at its pins, PEFT, TRL and Liger (no torch, no CUDA: the GPU machine has
# its own). Every wheel is py3-none-any or abi3, so it installs on the GPU machine's Python. Stays under 64 MiB.
#
#   bash benchmarks/gpu_wheels.sh            # -> benchmarks/wheels/
set -euo pipefail
cd "$(dirname "$0")"
OUT=${1:-wheels}
PIP=${PIP:-../.venv/bin/pip}
mkdir -p "$OUT"
"$PIP" download --quiet --no-deps --only-binary=:all: --dest "$OUT" \
  "transformers>=5.23,<5.24" "peft>=0.21,<0.22" "accelerate>=1.15,<1.16" "trl>=1.16,<1.17" "liger-kernel" \
  "datasets>=5.2,<5.3" "gguf>=0.19,<0.20" "huggingface-hub>=1.0" "rich>=13" "markdown-it-py" "mdurl" "packaging"
# compiled but ABI-stable (one wheel serves every CPython 3.9+ on x86-64 Linux)
"$PIP" download --quiet --no-deps --only-binary=:all: --dest "$OUT" --platform manylinux_2_17_x86_64 \
  --python-version 3.11 "tokenizers>=0.22" "safetensors>=0.4"
# SmolLM2's tokenizer (3.5 MB), for the random-weight models when the bundled packages are not on the GPU machine
../.venv/bin/python -c "import sys; from transformers import AutoTokenizer; from tuneforge.models.load import resolve_model; AutoTokenizer.from_pretrained(resolve_model('smollm2-135m-instruct')).save_pretrained(sys.argv[1])" "$OUT/tokenizer"
size=$(du -sm "$OUT" | cut -f1)
echo "$OUT: $(ls "$OUT"/*.whl | wc -l) wheels, ${size} MiB"
if [ "$size" -ge 64 ]; then
  echo "over 64 MiB: drop what the GPU machine already has (gpu.sh installs only what it lacks)" >&2
  exit 1
fi
