#!/usr/bin/env bash
# For a GPU node that cannot install from the network and runs a Python 3.12 with a CUDA torch but
# not the trainer's stack (no atorch; transformers 5 where the trainer needs 4): fetches, on a
# machine whose pip reaches PyPI, the wheels that node needs into .whl/, which run.sh installs there.
# The versions carried are the trainer image's own (images/trainer/requirements.lock). Inside the
# trainer image none of this is needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
# atorch and what it needs that such a node lacks or has too new (safetensors 0.8 dropped a private
# function atorch imports); the trainer's transformers, tokenizers and hub client (transformers 4
# rejects newer ones); peft, built against that transformers.
packages=(atorch dlrover deprecated safetensors transformers huggingface_hub tokenizers peft)
lock=images/trainer/requirements.lock
pins=()
for name in "${packages[@]}"; do
  pin=$(grep -i "^${name}==" "$lock") || { echo "wheels.sh: $name is not pinned in $lock" >&2; exit 1; }
  pins+=("$pin")
done
rm -rf .whl
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
ls .whl
du -sh .whl
