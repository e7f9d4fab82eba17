#!/usr/bin/env bash
# Builds the binaries of the end-to-end test cluster from their Go modules
# (no Docker, no release downloads on the test machines) into a cache keyed by
# component and version, so a second run only checks that the artifacts exist.
#
#   tests/e2e/cluster/build.sh [component...]   # default: all components
#
# Components: kubernetes etcd kwok training-operator helm
# Cache:      ${MFT_CLUSTER_CACHE:-$HOME/.cache/mftjob/cluster}/<component>-<version>/
# Go caches:  Go's defaults (~/go/pkg/mod, ~/.cache/go-build) unless GOMODCACHE /
#             GOCACHE are set; both live under $HOME so they survive between runs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODULES="$HERE/modules"
CACHE="${MFT_CLUSTER_CACHE:-$HOME/.cache/mftjob/cluster}"

# Pinned here and in the wrapper go.mod files; build.sh reads the version from
# the go.mod so the two cannot drift apart.
declare -A MODULE_OF=(
  [kubernetes]=k8s.io/kubernetes
  [etcd]=go.etcd.io/etcd/server/v3
  [kwok]=sigs.k8s.io/kwok
  [training-operator]=github.com/kubeflow/training-operator
  [helm]=helm.sh/helm/v3
)
ALL_COMPONENTS=(kubernetes etcd kwok training-operator helm)
# Bumped when a component's build recipe changes (flags, copied files), so cached builds made by
# the old recipe are not reused.
declare -A RECIPE_REVISION=([helm]=2)

die() { echo "build.sh: ERROR: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

# Version of the pinned module, read from the wrapper go.mod (the first
# "require" line naming it; the wrappers list it as a direct dependency).
module_version() {
  local comp=$1 mod=${MODULE_OF[$1]}
  local v
  v=$(awk -v m="$mod" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' \
      "$MODULES/$comp/go.mod")
  [[ -n "$v" ]] || die "cannot find $mod in $MODULES/$comp/go.mod"
  echo "$v"
}

# Prints the cache directory of a component (used by up.sh too).
component_dir() { echo "$CACHE/$1-$(module_version "$1")${RECIPE_REVISION[$1]:+-r${RECIPE_REVISION[$1]}}"; }

GO_CHECKED=0
require_go() {
  [[ $GO_CHECKED == 1 ]] && return 0
  GO="${GO:-$(command -v go || true)}"
  if [[ -z "$GO" && -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go; fi
  if [[ -z "$GO" ]] || ! command -v "$GO" >/dev/null; then
    die "'${GO:-go}' not found (looked on PATH and at /usr/local/go/bin/go). Go >= 1.26 is needed to build the test cluster; install it or set GO=/path/to/go."
  fi
  # GOTOOLCHAIN=local: a module that asks for a newer Go fails here instead of
  # silently downloading a toolchain (the test machines may not reach it).
  export GOTOOLCHAIN=local CGO_ENABLED=0
  export GOFLAGS="${GOFLAGS:--p=2} -buildvcs=false -mod=readonly"
  log "using $("$GO" version) (GOMODCACHE=$("$GO" env GOMODCACHE) GOCACHE=$("$GO" env GOCACHE))"
  GO_CHECKED=1
}

# Directory of a downloaded module in the module cache (for YAML files shipped
# inside Go modules: the PyTorchJob CRD, KWOK's stages and CRDs).
module_src_dir() {
  local comp=$1 mod=$2 ver=$3
  (cd "$MODULES/$comp" && "$GO" mod download -json "$mod@$ver") |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

now() { date +%s; }

build_kubernetes() {
  local ver=$1 out=$2 bd
  bd=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local major minor
  major=${ver#v}; major=${major%%.*}
  minor=${ver#v*.}; minor=${minor%%.*}
  # Without these the binaries report v0.0.0-master and clients (kubectl,
  # Helm's kubeVersion checks) see a meaningless server version.
  local ld="-s -w"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$ver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$bd -X $pkg.gitCommit=module-$ver"
  done
  (cd "$MODULES/kubernetes" && "$GO" build -trimpath -ldflags "$ld" -o "$out/bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler)
}

build_etcd() {
  local ver=$1 out=$2
  # package main sits at the root of the server module.
  (cd "$MODULES/etcd" && "$GO" build -trimpath -ldflags "-s -w" -o "$out/bin/etcd" go.etcd.io/etcd/server/v3)
}

build_kwok() {
  local ver=$1 out=$2 src
  (cd "$MODULES/kwok" && "$GO" build -trimpath \
      -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${ver#v}" \
      -o "$out/bin/kwok" sigs.k8s.io/kwok/cmd/kwok)
  src=$(module_src_dir kwok sigs.k8s.io/kwok "$ver")
  [[ -d "$src/kustomize/stage" ]] || die "KWOK stages not found under $src"
  # Since v0.8.0 KWOK has no built-in stages; "fast" = node/fast +
  # node/heartbeat-with-lease + pod/fast (see kustomize/stage/fast).
  mkdir -p "$out/stages/fast" "$out/crds"
  local f
  for f in "$src"/kustomize/stage/node/fast/*.yaml "$src"/kustomize/stage/node/heartbeat-with-lease/*.yaml \
           "$src"/kustomize/stage/pod/fast/*.yaml; do
    [[ "$(basename "$f")" == kustomization.yaml ]] && continue
    cp "$f" "$out/stages/fast/"
  done
  cp "$src"/kustomize/crd/bases/*.yaml "$out/crds/"
  chmod -R u+w "$out/stages" "$out/crds"
}

build_training_operator() {
  local ver=$1 out=$2 src
  (cd "$MODULES/training-operator" && "$GO" build -trimpath -ldflags "-s -w" \
      -o "$out/bin/training-operator" github.com/kubeflow/training-operator/cmd/training-operator.v1)
  src=$(module_src_dir training-operator github.com/kubeflow/training-operator "$ver")
  mkdir -p "$out/crds"
  cp "$src/manifests/base/crds/kubeflow.org_pytorchjobs.yaml" "$out/crds/"
  chmod -R u+w "$out/crds"
}

build_helm() {
  local ver=$1 out=$2
  (cd "$MODULES/helm" && "$GO" build -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$ver -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=36" \
      -o "$out/bin/helm" helm.sh/helm/v3/cmd/helm)
}

build_component() {
  local comp=$1 ver dir t0 tmp
  ver=$(module_version "$comp")
  dir=$(component_dir "$comp")
  if [[ -f "$dir/.complete" ]]; then
    log "$comp $ver: cached in $dir"
    return 0
  fi
  require_go
  t0=$(now)
  log "$comp $ver: building into $dir ..."
  mkdir -p "$CACHE"
  # Build into a scratch dir and rename at the end, so an interrupted build
  # never leaves a half-filled cache entry that later runs would trust.
  tmp=$(mktemp -d "$CACHE/.tmp-$comp-XXXXXX")
  chmod 755 "$tmp"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  "build_${comp//-/_}" "$ver" "$tmp"
  date -u +%Y-%m-%dT%H:%M:%SZ > "$tmp/.complete"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
  log "$comp $ver: built in $(( $(now) - t0 ))s"
}

main() {
  local comps=("$@") c t0
  [[ ${#comps[@]} -gt 0 ]] || comps=("${ALL_COMPONENTS[@]}")
  for c in "${comps[@]}"; do
    [[ -n "${MODULE_OF[$c]:-}" ]] || die "unknown component '$c' (known: ${ALL_COMPONENTS[*]})"
  done
  t0=$(now)
  for c in "${comps[@]}"; do build_component "$c"; done
  log "all done in $(( $(now) - t0 ))s; cache: $CACHE"
}

# Sourcing this file (as up.sh does) only defines the helpers.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
