# Helpers shared by up.sh, down.sh and smoke.sh (sourced, not executed).
# shellcheck shell=bash

# Prints N distinct free TCP ports on 127.0.0.1. All sockets are held open
# together so the kernel hands out distinct ports; a small race with other
# programs remains, and up.sh fails loudly if a component cannot bind.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Start time of a process in clock ticks since boot (field 22 of
# /proc/PID/stat); recorded next to the PID so a reused PID is never killed.
proc_start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # The command name (field 2) may contain spaces; cut after its ')'.
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo "${20}"
}

# start_component STATE_DIR NAME BINARY ARGS...
# Runs BINARY in its own session (so it and its children form one process
# group that down.sh can stop without touching anything else), logging to
# STATE_DIR/logs/NAME.log and recording STATE_DIR/pids/NAME.pid.
start_component() {
  local dir=$1 name=$2 bin=$3
  shift 3
  [[ -x "$bin" ]] || { echo "start_component: $bin is not executable" >&2; return 1; }
  printf '%q ' "$bin" "$@" > "$dir/logs/$name.cmdline"
  echo >> "$dir/logs/$name.cmdline"
  setsid "$bin" "$@" </dev/null >"$dir/logs/$name.log" 2>&1 &
  local pid=$!
  echo "$pid $(proc_start_time "$pid" || echo 0)" > "$dir/pids/$name.pid"
  # Start order, so down.sh stops them in reverse.
  echo "$name" >> "$dir/pids/order"
}

# True when the recorded process is still the one we started.
component_alive() {
  local dir=$1 name=$2 pid st
  [[ -f "$dir/pids/$name.pid" ]] || return 1
  read -r pid st < "$dir/pids/$name.pid"
  [[ -d "/proc/$pid" ]] || return 1
  [[ "$(proc_start_time "$pid" 2>/dev/null)" == "$st" ]]
}

cluster_running() {
  local dir=$1 name
  [[ -f "$dir/pids/order" ]] || return 1
  while read -r name; do
    component_alive "$dir" "$name" && return 0
  done < "$dir/pids/order"
  return 1
}

# wait_for STATE_DIR NAME TIMEOUT_S COMMAND...: retries COMMAND until it
# succeeds; gives up early with the component's log tail if it died.
wait_for() {
  local dir=$1 name=$2 timeout=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  while ! "$@" >/dev/null 2>&1; do
    if ! component_alive "$dir" "$name"; then
      echo "wait_for: $name exited; last lines of $dir/logs/$name.log:" >&2
      tail -n 30 "$dir/logs/$name.log" >&2 || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "wait_for: $name not ready after ${timeout}s ($*); last lines of $dir/logs/$name.log:" >&2
      tail -n 30 "$dir/logs/$name.log" >&2 || true
      return 1
    fi
    sleep 0.3
  done
}

# nodes_ready KUBECTL KUBECONFIG N: N nodes report Ready (KWOK has initialized them).
nodes_ready() {
  local n
  n=$("$1" --kubeconfig "$2" get nodes -l type=kwok \
      -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)
  ((n >= $3))
}

# _sign NAME CN ORG EXTFILE_CONTENT: key + certificate signed by the test CA.
_sign() {
  local pki=$1 name=$2 subj=$3 ext=$4
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/$name.key" -out "$pki/$name.csr" \
    -subj "$subj" 2>/dev/null
  printf '%s\n' "$ext" > "$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# gen_pki DIR: (ECDSA P-256 throughout: RSA key generation costs seconds on a
# busy machine) CA, apiserver serving cert, admin client cert (system:masters),
# KWOK serving cert, training-operator webhook cert, service-account key pair.
gen_pki() {
  local pki=$1
  mkdir -p "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 30 \
    -subj "/CN=mftjob-e2e-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  local server_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth"
  _sign "$pki" apiserver "/CN=kube-apiserver" "$server_ext
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1"
  _sign "$pki" admin "/O=system:masters/CN=kubernetes-admin" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  _sign "$pki" kwok "/CN=kwok" "$server_ext
subjectAltName=DNS:localhost,IP:127.0.0.1"
  _sign "$pki" webhook "/CN=training-operator.kubeflow.svc" "$server_ext
subjectAltName=DNS:training-operator.kubeflow.svc,DNS:localhost,IP:127.0.0.1"
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key" 2>/dev/null
  openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 600 "$pki"/*.key
}

# write_kubeconfig FILE SERVER CA CERT KEY: admin kubeconfig with embedded data,
# so it keeps working when copied elsewhere.
write_kubeconfig() {
  local f=$1 server=$2 ca=$3 cert=$4 key=$5
  cat > "$f" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mftjob-e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 < "$ca")
users:
- name: mftjob-e2e-admin
  user:
    client-certificate-data: $(base64 -w0 < "$cert")
    client-key-data: $(base64 -w0 < "$key")
contexts:
- name: mftjob-e2e
  context:
    cluster: mftjob-e2e
    user: mftjob-e2e-admin
current-context: mftjob-e2e
EOF
  chmod 600 "$f"
}
