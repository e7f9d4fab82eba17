#!/usr/bin/env bash
# Stops the cluster started by up.sh: only the processes whose PIDs up.sh
# recorded (each with its own process group, i.e. its children), in reverse
# start order, then removes etcd's tmpfs data. Logs and PKI stay in the state
# dir for debugging; --purge removes the state dir as well.
#
#   tests/e2e/cluster/down.sh [--purge]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
DIR="${MFT_CLUSTER_DIR:-$REPO/.cluster}"
# shellcheck source=tests/e2e/cluster/lib.sh
source "$HERE/lib.sh"

PURGE=0
[[ "${1:-}" == "--purge" ]] && PURGE=1

if [[ ! -d "$DIR" ]]; then
  echo "down.sh: no state dir $DIR; nothing to stop" >&2
  exit 0
fi

# signal_component NAME SIGNAL: signals the component's process group, but only
# if the recorded PID still belongs to the process up.sh started.
signal_component() {
  local name=$1 sig=$2 pid
  component_alive "$DIR" "$name" || return 0
  read -r pid _ < "$DIR/pids/$name.pid"
  # setsid made the component a group leader; fall back to the single PID if not.
  if [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]]; then
    kill "-$sig" -- "-$pid" 2>/dev/null || true
  else
    kill "-$sig" "$pid" 2>/dev/null || true
  fi
}

if [[ -f "$DIR/pids/order" ]]; then
  mapfile -t names < <(tac "$DIR/pids/order")
  for name in "${names[@]}"; do signal_component "$name" TERM; done
  # Give them up to 10 s to exit cleanly, then force.
  for _ in $(seq 1 50); do
    alive=0
    for name in "${names[@]}"; do component_alive "$DIR" "$name" && alive=1; done
    ((alive == 0)) && break
    sleep 0.2
  done
  for name in "${names[@]}"; do
    if component_alive "$DIR" "$name"; then
      echo "down.sh: $name did not stop on TERM, sending KILL" >&2
      signal_component "$name" KILL
    fi
  done
  rm -f "$DIR"/pids/*.pid "$DIR/pids/order"
fi

if [[ -f "$DIR/tmpfs-path" ]]; then
  tmpfs=$(cat "$DIR/tmpfs-path")
  # Only remove what up.sh created.
  case "$tmpfs" in
    /dev/shm/mftjob-cluster-*|"$DIR"/tmpfs) rm -rf "$tmpfs" ;;
  esac
  rm -f "$DIR/tmpfs-path"
fi

if ((PURGE)); then
  rm -rf "$DIR"
fi
echo "down.sh: stopped cluster in $DIR" >&2
