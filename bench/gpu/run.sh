#!/usr/bin/env bash
# One prepared GPU benchmark run (single H200, under 8 minutes): ours vs the HF Trainer on GPT-NeoX
# ~410M and ~1.4B, bf16, packed 2048/4096. Run from the repository root where python3 (or $PYTHON)
# holds a CUDA torch. Packages that machine lacks come from the wheels in .whl/ (or $WHEELS), which
# bench/gpu/wheels.sh fetches where pip reaches PyPI; without them the trainer stack
# (images/trainer/requirements.lock) must be installed. Results also land in $OUT (or the current
# folder). Arguments go to bench_gpu.py (`--smoke`: the same code on CPU with the tiny model;
# `--budget S`: seconds for all configurations, 420 by default, so a hung one cannot take the
# whole 8 minutes; the timeout below is only a net).
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-python3}"
wheels="${WHEELS:-.whl}"
out="${OUT:-.}/bench-gpu.jsonl"
: > "$out"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
if [ -d "$wheels" ]; then
  site="$(mktemp -d)"
  trap 'rm -rf "$site"' EXIT
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/trainer${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
"$python" - <<'PY'
import sys
from importlib.metadata import version

import torch

print("python", sys.version.split()[0], *(f"{p} {version(p)}" for p in ("torch", "transformers", "atorch")),
      "cuda", torch.cuda.is_available())
PY
timeout 450 "$python" bench/gpu/bench_gpu.py --out "$out" "$@"
