#!/usr/bin/env bash
# Installs one image's Python environment: the pinned lock first (no resolver surprises), then the
# project package itself without dependencies, so nothing unpinned can slip in. The Dockerfiles run
# this script, and the image tests run it into a virtual environment, so both install the same way.
#
# usage: images/install.sh <operator|trainer> <python> [pip install options...]
set -euo pipefail

image=${1:?usage: install.sh <operator|trainer> <python>}
python=${2:?usage: install.sh <operator|trainer> <python>}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

case "$image" in
  operator) package="$root/operator" ;;
  trainer) package="$root/trainer" ;;
  *) echo "install.sh: unknown image '$image' (expected operator or trainer)" >&2; exit 2 ;;
esac

"$python" -m pip install --no-cache-dir --no-deps -r "$here/$image/requirements.lock" "$@"
"$python" -m pip install --no-cache-dir --no-deps "$package"
"$python" -m pip check
