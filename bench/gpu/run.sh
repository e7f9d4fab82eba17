#!/usr/bin/env bash
# One prepared GPU benchmark run (single H200, under 8 minutes): ours vs the HF Trainer on GPT-NeoX
# ~410M and ~1.4B, bf16, packed 2048/4096. Run from the repository root with the trainer stack
# installed (images/trainer/requirements.lock); results also land in $OUT (or the current folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-.}/bench-gpu.jsonl"
: > "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export PYTHONPATH="$PWD/trainer${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
timeout 470 python bench/gpu/bench_gpu.py --out "$out"
