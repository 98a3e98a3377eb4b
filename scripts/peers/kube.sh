# shellcheck shell=bash
# shellcheck disable=SC2154 # here, cache and the *_BIN paths come from install.sh and env.sh
# The Kubernetes exec rig, sourced by install.sh (`install.sh kube`; part of the default set):
#   kube-apiserver  built from k8s.io/kubernetes at KUBE_VERSION through a throwaway module
#   etcd            go.etcd.io/etcd/server/v3 at the version that kubernetes release requires,
#                   built in the same throwaway module (no version drift, shared build cache)
#   test-kubelet    tests/support/kubelet: a Go module in this repo (go.mod/go.sum committed),
#                   the kubelet's own streaming server (k8s.io/cri-streaming) running commands
#                   on the host; its stamp is a hash of its sources, so an edit rebuilds it
# Uses install.sh's fresh/stamp/log/die, $cache, $force and the *_BIN paths from env.sh.
# Cold, measured on 2 CPUs shared with other jobs, every cache empty: 19 min after pebble and
# minio (module downloads ~1 min, etcd 2.3 min, kube-apiserver 15.8 min, test kubelet 2 s);
# with Go caches that already held the module downloads: 12 min for kube-apiserver. Warm: < 1 s.

KUBE_VERSION=v1.37.2
KUBE_MINOR=37
# The release's staging modules (k8s.io/api, k8s.io/apiserver, ...) are required as v0.0.0
# and replaced by ./staging in its own go.mod; outside it they are published as v0.$MINOR.$PATCH.
KUBE_STAGING_VERSION=v0.37.2
# What k8s.io/kubernetes@$KUBE_VERSION requires (its go.mod, indirect): keep the two in step.
ETCD_VERSION=v3.7.0

kube_module_dir() { printf '%s\n' "$cache/src/kube"; }

# Prepares the throwaway module that builds kube-apiserver and etcd (idempotent).
kube_module() {
  local mod want="k8s.io/kubernetes@$KUBE_VERSION go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  mod="$(kube_module_dir)"
  if [[ -f "$mod/go.sum" && "$(cat "$mod/.pin" 2>/dev/null)" == "$want" ]]; then return; fi
  command -v go >/dev/null || die "Go is required to build the kube rig (https://go.dev/dl/)"
  rm -rf "$mod" && mkdir -p "$mod"
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$gomod" ]] || die "kube: cannot download k8s.io/kubernetes@$KUBE_VERSION's go.mod"
  local staging
  staging="$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$gomod" | sort -u)"
  [[ -n "$staging" ]] || die "kube: no v0.0.0 staging modules found in $gomod"
  {
    printf 'module synapse-backup-peers/kube\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' \
      "$KUBE_VERSION"
    local m
    for m in $staging; do printf '\t%s => %s %s\n' "$m" "$m" "$KUBE_STAGING_VERSION"; done
    printf ')\n'
  } >"$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "go.etcd.io/etcd/server/v3"\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n)\n' \
    >"$mod/tools.go"
  (cd "$mod" &&
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" &&
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  # A newer requirement than the release's own would mean building something else.
  (cd "$mod" && go list -m k8s.io/kubernetes go.etcd.io/etcd/server/v3) >"$mod/.resolved"
  if ! grep -qx "k8s.io/kubernetes $KUBE_VERSION" "$mod/.resolved" ||
    ! grep -qx "go.etcd.io/etcd/server/v3 $ETCD_VERSION" "$mod/.resolved"; then
    die "kube: the module resolved to $(tr '\n' ' ' <"$mod/.resolved"), not $want"
  fi
  printf '%s\n' "$want" >"$mod/.pin"
}

kube_apiserver_peer() {
  local want="k8s.io/kubernetes@$KUBE_VERSION" out="$KUBE_APISERVER_BIN"
  if fresh kube-apiserver "$want" "$out"; then return; fi
  kube_module
  log "building kube-apiserver $KUBE_VERSION (first run only; 10-15 min on 2 cores)"
  local t0=$SECONDS tmp="$out.tmp.$$" v=k8s.io/component-base/version
  local ldflags="-s -w -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$KUBE_MINOR"
  ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
  (cd "$(kube_module_dir)" &&
    CGO_ENABLED=0 go build -buildvcs=false -ldflags "$ldflags" -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  local got
  got="$("$tmp" --version 2>&1)" || die "kube-apiserver --version failed: $got"
  [[ "$got" == "Kubernetes $KUBE_VERSION" ]] || die "kube-apiserver: built '$got', not $KUBE_VERSION"
  mv -f "$tmp" "$out"
  stamp kube-apiserver "$want"
  log "built kube-apiserver in $((SECONDS - t0)) s"
}

etcd_peer() {
  local want="go.etcd.io/etcd/server/v3@$ETCD_VERSION" out="$ETCD_BIN"
  if fresh etcd "$want" "$out"; then return; fi
  kube_module
  log "building etcd $ETCD_VERSION"
  local t0=$SECONDS tmp="$out.tmp.$$"
  (cd "$(kube_module_dir)" &&
    CGO_ENABLED=0 go build -buildvcs=false -ldflags "-s -w" -o "$tmp" go.etcd.io/etcd/server/v3)
  local got
  # sed reads all of it: `head -1` could exit first, and etcd's SIGPIPE would fail the pipeline.
  got="$("$tmp" --version 2>&1 | sed -n 1p)"
  [[ "$got" == "etcd Version: ${ETCD_VERSION#v}" ]] || die "etcd: built '$got', not $ETCD_VERSION"
  mv -f "$tmp" "$out"
  stamp etcd "$want"
  log "built etcd in $((SECONDS - t0)) s"
}

test_kubelet_peer() {
  local src out="$TEST_KUBELET_BIN" want
  src="$(cd "$here/../../tests/support/kubelet" && pwd)"
  want="sha256:$(cd "$src" && cat go.mod go.sum ./*.go | sha256sum | cut -d' ' -f1)"
  if fresh test-kubelet "$want" "$out"; then return; fi
  command -v go >/dev/null || die "Go is required to build the test kubelet (https://go.dev/dl/)"
  log "building the test kubelet ($src)"
  local t0=$SECONDS tmp="$out.tmp.$$"
  (cd "$src" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -o "$tmp" .)
  mv -f "$tmp" "$out"
  stamp test-kubelet "$want"
  log "built the test kubelet in $((SECONDS - t0)) s"
}

kube_peers() {
  etcd_peer
  kube_apiserver_peer
  test_kubelet_peer
}
