#!/usr/bin/env bash
# The CPU demo: pretrain a tiny GPT-NeoX (SST), fine-tune it with LoRA on two chat tasks, merge the
# adapter, and ask the merged model a question. Each step is the same command a user would type.
set -euo pipefail
cd "$(dirname "$0")/../.."

export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
NPROC=${DEMO_NPROC:-2}
latest() { ls -d "$1"/checkpoint-* | sort -t- -k2 -n | tail -n 1; }

echo "== 1/4 self-supervised pretraining of a tiny GPT-NeoX (random init) on the sample code data"
rm -rf runs/demo
mftctl run examples/demo/mftjob-sst.yaml --local --nproc "$NPROC"

echo "== 2/4 LoRA fine-tuning on the code-helper and code-exam tasks"
base=$(latest runs/demo/sst)
mftctl run examples/demo/mftjob-lora.yaml --local --nproc "$NPROC" --mount "/base=$base"

echo "== 3/4 merging the adapter into the base model"
mft-train merge-lora --base "$base" --adapter "$(latest runs/demo/lora)" --out runs/demo/merged

echo "== 4/4 asking the merged model"
mft-train generate --model runs/demo/merged --max-new-tokens 64 \
  --system "You are a helpful Python coding assistant. Answer with short, correct code." \
  --prompt "I need a function \`count_items\` that gives the number of items of a list of numbers. Can you write it?"
