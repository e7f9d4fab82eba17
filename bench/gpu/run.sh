#!/usr/bin/env bash
# The GPU benchmark on one GPU node (about 8 minutes at most, 4 so far on an H200): ours vs the HF Trainer on GPT-NeoX
# ~410M and ~1.4B, bf16, packed 2048/4096. Run it from a checkout of the repository inside the
# trainer image (its python3 has the pinned stack, images/trainer/requirements.lock), or where
# python3 (or $PYTHON) holds a CUDA torch. On an offline node, packages that Python lacks or has in
# versions the trainer cannot use come from the wheels in .whl/ (or $WHEELS), which
# bench/gpu/wheels.sh fetches where pip reaches PyPI. Results also land in $OUT/bench-gpu.jsonl
# ($OUT defaults to the repository root). Arguments go to bench_gpu.py (`--smoke`: the same code on
# CPU with the tiny model; `--budget S`: seconds for all configurations, 420 by default, so a hung
# one cannot take the whole run; the timeout below is only a net).
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
# Packed rows through the varlen kernel against the mask path (seconds); the benchmark runs either way.
timeout 120 "$python" bench/gpu/check_attention.py || echo "run.sh: the attention check failed (above)"
timeout 450 "$python" bench/gpu/bench_gpu.py --out "$out" "$@"
# Where our step's time goes (about a minute): by default GPT-NeoX 410M at 2048, the configuration
# furthest behind the HF Trainer in the last run (BENCHMARKS.md).
smoke=()
for arg in "$@"; do [ "$arg" = --smoke ] && smoke=(--smoke); done
timeout 150 "$python" bench/gpu/profile_gpu.py "${smoke[@]}" || echo "run.sh: the profile failed (above)"
