#!/usr/bin/env bash
# Smoke test of the test cluster itself: builds (if needed), starts a cluster in
# a scratch state dir, checks that a PyTorchJob runs end to end (training-operator
# creates pods and services, the scheduler binds them to fake GPU nodes, KWOK
# completes them, the job gets Succeeded / Failed), that the TokenRequest API,
# the garbage collector and `kubectl logs` through KWOK work, then stops the
# cluster and checks that no process is left.
#
#   tests/e2e/cluster/smoke.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
# shellcheck source=tests/e2e/cluster/lib.sh
source "$HERE/lib.sh"

if [[ -z "${KUBECTL:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/kubectl" ]]; then KUBECTL="$REPO/.venv/bin/kubectl"; else KUBECTL=kubectl; fi
fi
export KUBECTL
# A scratch state dir, so a developer's cluster in .cluster/ is left alone.
export MFT_CLUSTER_DIR="${MFT_SMOKE_DIR:-$(mktemp -d /tmp/mftjob-smoke-XXXXXX)}"
DIR="$MFT_CLUSTER_DIR"

pass() { echo "smoke: PASS $*"; }
fail() { echo "smoke: FAIL $*" >&2; exit 1; }

"$HERE/build.sh" kubernetes etcd kwok training-operator

cleanup() {
  local rc=$?
  if [[ -f "$DIR/pids/order" ]]; then
    # Keep the PIDs to verify that down.sh left nothing behind.
    local pids
    pids=$(cat "$DIR"/pids/*.pid 2>/dev/null | awk '{print $1}')
    "$HERE/down.sh" || rc=1
    local p
    for p in $pids; do
      if [[ -d /proc/$p ]] || ps -eo pgid= | tr -d ' ' | grep -qx "$p"; then
        echo "smoke: FAIL process/group $p still alive after down.sh" >&2
        rc=1
      fi
    done
    ((rc == 0)) && echo "smoke: PASS down.sh left no process behind"
  fi
  if ((rc == 0)) && [[ -z "${MFT_SMOKE_DIR:-}" ]]; then rm -rf "$DIR"; fi
  ((rc == 0)) || echo "smoke: state and logs kept in $DIR" >&2
  exit "$rc"
}
trap cleanup EXIT

"$HERE/up.sh"
export KUBECONFIG="$DIR/kubeconfig"
kc() { "$KUBECTL" "$@"; }

server_version=$(kc version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')
[[ "$server_version" == v1.* && "$server_version" != *master* ]] || fail "server version is '$server_version'"
pass "server version $server_version"

# --- TokenRequest: a ServiceAccount token authenticates as that ServiceAccount.
kc create serviceaccount smoke-sa >/dev/null
token=$(kc create token smoke-sa --duration=10m)
server=$(kc config view --raw -o jsonpath='{.clusters[0].cluster.server}')
# An empty kubeconfig, so the admin client certificate is not sent alongside the token.
as_sa() { "$KUBECTL" --kubeconfig=/dev/null --server="$server" --certificate-authority="$DIR/pki/ca.crt" --token="$token" "$@"; }
whoami=$(as_sa auth whoami -o jsonpath='{.status.userInfo.username}')
[[ "$whoami" == "system:serviceaccount:default:smoke-sa" ]] || fail "token authenticates as '$whoami'"
# RBAC is enforced: the bare ServiceAccount may not list pods.
if as_sa get pods >/dev/null 2>&1; then
  fail "RBAC not enforced: a ServiceAccount without roles could list pods"
fi
pass "TokenRequest token authenticates as $whoami and RBAC denies it"

replica() { # TYPE [extra template annotations as YAML flow map]
  cat <<EOF
    $1:
      replicas: 1
      restartPolicy: Never
      template:
        metadata:
          annotations: ${2:-{\}}
        spec:
          containers:
          - name: pytorch
            image: busybox
            command: ["sh", "-c", "echo training"]
            ports:
            - name: pytorchjob-port
              containerPort: 23456
            resources:
              limits:
                nvidia.com/gpu: "8"
EOF
}

pytorchjob() { # NAME [extra template annotations as YAML flow map]
  cat <<EOF
apiVersion: kubeflow.org/v1
kind: PyTorchJob
metadata:
  name: $1
  namespace: default
spec:
  pytorchReplicaSpecs:
EOF
  replica Master "${2:-}"
  replica Worker "${2:-}"
}

# --- success path
t0=$SECONDS
pytorchjob smoke-ok | kc apply -f - >/dev/null
kc wait --for=condition=Succeeded pytorchjob/smoke-ok --timeout=120s >/dev/null \
  || { kc get pytorchjob smoke-ok -o yaml >&2; kc get pods -o wide >&2; fail "smoke-ok did not succeed"; }
for pod in smoke-ok-master-0 smoke-ok-worker-0; do
  phase=$(kc get pod "$pod" -o jsonpath='{.status.phase}')
  node=$(kc get pod "$pod" -o jsonpath='{.spec.nodeName}')
  [[ "$phase" == Succeeded ]] || fail "$pod phase $phase"
  [[ "$node" == kwok-gpu-node-* ]] || fail "$pod on node '$node'"
  kc get service "$pod" >/dev/null || fail "service $pod missing"
done
env_master=$(kc get pod smoke-ok-worker-0 -o jsonpath='{.spec.containers[0].env[?(@.name=="MASTER_ADDR")].value}')
[[ "$env_master" == smoke-ok-master-0 ]] || fail "worker MASTER_ADDR is '$env_master'"
pass "PyTorchJob smoke-ok: pods + services created, pods Succeeded on fake GPU nodes, job Succeeded ($((SECONDS - t0))s)"

# --- `kubectl logs` served by KWOK from a file (CRI log format), per pod via a Logs object.
logfile="$DIR/smoke-master.log"
printf '%s stdout F {"step": 1, "loss": 0.5}\n%s stdout F {"step": 2, "loss": 0.25}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%S.000000000Z)" "$(date -u +%Y-%m-%dT%H:%M:%S.000000000Z)" > "$logfile"
kc apply -f - >/dev/null <<EOF
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Logs
metadata:
  name: smoke-ok-master-0
  namespace: default
spec:
  logs:
  - containers: [pytorch]
    logsFile: $logfile
EOF
logs_ok=0
for _ in $(seq 1 30); do
  if out=$(kc logs smoke-ok-master-0 -c pytorch 2>&1) && grep -q '"step": 2' <<<"$out"; then logs_ok=1; break; fi
  sleep 0.5
done
((logs_ok)) || fail "kubectl logs through KWOK: $out"
pass "kubectl logs smoke-ok-master-0 served from $logfile"

# --- garbage collection: deleting the PyTorchJob removes its pods (owner references).
kc delete pytorchjob smoke-ok --wait=true >/dev/null
gc_ok=0
for _ in $(seq 1 120); do
  if [[ -z "$(kc get pods -l training.kubeflow.org/job-name=smoke-ok -o name)" ]]; then gc_ok=1; break; fi
  sleep 0.5
done
((gc_ok)) || fail "pods of deleted PyTorchJob smoke-ok were not garbage collected"
pass "garbage collector removed the pods of the deleted PyTorchJob"

# --- failure path: the test annotation makes KWOK fail the pods with exit code 1.
t0=$SECONDS
pytorchjob smoke-fail '{"mft.dev/test-fail": "true"}' | kc apply -f - >/dev/null
kc wait --for=condition=Failed pytorchjob/smoke-fail --timeout=120s >/dev/null \
  || { kc get pytorchjob smoke-fail -o yaml >&2; kc get pods -o wide >&2; fail "smoke-fail did not fail"; }
code=$(kc get pod smoke-fail-master-0 -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}')
[[ "$code" == 1 ]] || fail "smoke-fail-master-0 exit code '$code'"
pass "PyTorchJob smoke-fail: pods Failed with exit code 1, job Failed ($((SECONDS - t0))s)"

echo "smoke: all checks passed"
