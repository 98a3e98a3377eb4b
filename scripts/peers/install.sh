#!/usr/bin/env bash
# Builds the real peers the tests run against, into a cache that survives between runs:
#   pebble  (the workload container's API)  built from source with Go, pinned below
#   minio   (S3)                             built from source with Go, pinned below
#   venv    (Python aws-encryption-sdk, for the interop test), every package pinned
#   kube    (the Kubernetes exec rig: kube-apiserver, etcd, the test kubelet), see kube.sh
#   synapse (matrix-synapse from PyPI, pinned below, in a venv that uid 991 can read: tests run
#            it as 991 like the official image, so it lives outside a 0700 home, see env.sh)
#   actionlint (the GitHub workflows' linter, run by .ci/run) built from source with Go, pinned below
# Cache: ${SYNAPSE_PEERS_CACHE:-$HOME/.cache/synapse-backup-peers} (bin/, venv/, stamps/, src/).
# Needs: Go (1.26 used), Python 3 with venv + pip, network for the first run.
# Idempotent: a stamp per peer records the pin it was built from; a changed pin rebuilds,
# otherwise a warm run takes under a second. Cold (empty Go + pip caches, 2 CPUs): ~6.5 min
# (pebble ~40 s, minio ~5 min, venv ~1 min).
# Tests find the peers through `. scripts/peers/env.sh` (or the default cache path).
# The kube rig adds ~19 min cold (kube-apiserver is most of it), see kube.sh: a cold run of
# everything measured 32 min on a busy 2-CPU machine (pebble 2 min, minio 11, venv 1, kube 19).
# Usage: bash scripts/peers/install.sh [--force] [minio|pebble|esdk|kube|synapse|actionlint ...]
#   With no names, installs all six; with names, only those (`install.sh minio` for the demo).
set -euo pipefail

PEBBLE_MODULE=github.com/canonical/pebble
PEBBLE_PKG=github.com/canonical/pebble/cmd/pebble
PEBBLE_VERSION=v1.26.0
# The newest actionlint on the Go module proxy when pinned (2026-11-29).
ACTIONLINT_MODULE=github.com/rhysd/actionlint
ACTIONLINT_PKG=github.com/rhysd/actionlint/cmd/actionlint
ACTIONLINT_VERSION=v1.7.12
# MinIO's RELEASE.* tags are not valid semver, so the proxy refuses them: pin a commit.
MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
# `pip freeze` of a fresh venv holding aws-encryption-sdk 4.0.7, the newest when pinned.
ESDK_PINS=(
  aws-encryption-sdk==4.0.7
  attrs==26.1.0 boto3==1.44.8 botocore==1.44.8 cffi==2.1.1 cryptography==50.0.2
  jmespath==1.1.0 pycparser==3.12 python-dateutil==2.9.0.post0 s3transfer==0.19.3
  six==1.17.0 urllib3==2.8.0 wrapt==2.5.2
)
# `pip freeze` of a fresh venv holding matrix-synapse 1.163.2 (the image pin in metadata.yaml is
# the same release). Binary wheels only: no Rust toolchain needed.
SYNAPSE_PINS=(
  matrix-synapse==1.163.2
  annotated-types==0.8.0 attrs==26.1.0 Automat==25.4.16 bcrypt==5.0.0 bleach==6.4.0
  canonicaljson==2.0.0 certifi==2026.10.19.post1 cffi==2.1.1 charset-normalizer==3.5.3
  constantly==23.10.4 cryptography==50.0.2 hyperlink==21.0.0 idna==3.20 ijson==3.6.0
  immutabledict==4.3.1 Incremental==24.11.0 Jinja2==3.1.6 jsonschema==4.26.0
  jsonschema-specifications==2025.9.1 MarkupSafe==3.0.4 matrix-common==1.3.0 msgpack==1.2.4
  multipart==2.0.1 netaddr==1.3.0 packaging==26.4 phonenumbers==9.0.43 pillow==13.0.0
  prometheus_client==0.26.0 pyasn1==0.6.5 pyasn1_modules==0.4.2 pycparser==3.12 pydantic==2.14.4
  pydantic_core==2.50.5 pymacaroons==0.13.0 PyNaCl==1.6.2 pyOpenSSL==26.4.0 pyparsing==3.3.3
  pyrsistent==0.20.0 python-multipart==0.0.34 PyYAML==6.0.4 referencing==0.37.0 requests==2.34.2
  rpds-py==2026.9.1 semantic-version==2.10.0 service-identity==26.1.0 setuptools-rust==1.13.0
  signedjson==1.1.4 six==1.17.0 sortedcontainers==2.4.0 treq==26.7.0 Twisted==26.10.0
  typing-inspection==0.4.5 typing_extensions==4.16.0 unpaddedbase64==2.1.0 urllib3==2.8.0
  webencodings==0.6.1 zope.interface==8.7
)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
. "$here/env.sh"
cache="$SYNAPSE_PEERS_CACHE"

die() { echo "install.sh: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }

force=0
want_pebble=0 want_minio=0 want_esdk=0 want_kube=0 want_synapse=0 want_actionlint=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    pebble) want_pebble=1 ;;
    minio) want_minio=1 ;;
    esdk | venv | python) want_esdk=1 ;;
    kube | kubernetes) want_kube=1 ;;
    synapse) want_synapse=1 ;;
    actionlint) want_actionlint=1 ;;
    -h | --help)
      echo "usage: bash scripts/peers/install.sh [--force] [minio|pebble|esdk|kube|synapse|actionlint ...] (default: all)"
      exit 0
      ;;
    *) die "unknown argument '$arg' (usage: install.sh [--force] [minio|pebble|esdk|kube|synapse|actionlint ...])" ;;
  esac
done
if ((want_pebble + want_minio + want_esdk + want_kube + want_synapse + want_actionlint == 0)); then
  want_pebble=1 want_minio=1 want_esdk=1 want_kube=1 want_synapse=1 want_actionlint=1
fi

mkdir -p "$SYNAPSE_PEERS_BIN" "$cache/stamps" "$cache/src"
exec 9>"$cache/.lock"
flock 9 2>/dev/null || true # one installer at a time (flock is util-linux; best effort)

# fresh NAME WANT: true if the stamp for NAME records WANT and its artefact exists.
fresh() { [[ $force == 0 && -e "$3" && "$(cat "$cache/stamps/$1" 2>/dev/null)" == "$2" ]]; }
stamp() { printf '%s\n' "$2" >"$cache/stamps/$1"; }

# Main module@version a Go binary was built from (empty if unreadable).
go_binary_pin() { go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $2 "@" $3 }'; }

# go_peer NAME MODULE PKG VERSION METHOD OUT
go_peer() {
  local name=$1 module=$2 pkg=$3 version=$4 method=$5 out=$6 want="$2@$4"
  if fresh "$name" "$want" "$out"; then return; fi
  command -v go >/dev/null || die "Go is required to build $name (https://go.dev/dl/)"
  if [[ $force == 0 && -x "$out" && "$(go_binary_pin "$out")" == "$want" ]]; then
    stamp "$name" "$want" # adopt a matching build made before stamps existed
    return
  fi
  log "building $name $version (first run only; minio takes minutes)"
  local t0=$SECONDS tmp="$out.tmp.$$"
  if [[ $method == install ]]; then
    local gobin="$cache/src/$name-gobin"
    rm -rf "$gobin" && mkdir -p "$gobin"
    GOBIN="$gobin" go install "$pkg@$version"
    mv "$gobin/$(basename "$pkg")" "$tmp" && rmdir "$gobin"
  else
    # `go install pkg@version` reads the module's version list (deprecation check), which
    # the proxy refuses for some modules; a throwaway module needs only the pinned version.
    local mod="$cache/src/$name"
    rm -rf "$mod" && mkdir -p "$mod"
    printf 'module synapse-backup-peers/%s\n\ngo 1.22\n' "$name" >"$mod/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" >"$mod/tools.go"
    (cd "$mod" && go get "$pkg@$version" && go build -o "$tmp" "$pkg")
  fi
  [[ "$(go_binary_pin "$tmp")" == "$want" ]] || die "$name: built binary is not $want"
  mv -f "$tmp" "$out"
  stamp "$name" "$want"
  log "built $name in $((SECONDS - t0)) s"
}

venv_peer() {
  local py="${PYTHON:-python3}" venv="$cache/venv"
  command -v "$py" >/dev/null || die "Python 3 is required ($py not found)"
  local want
  want="$("$py" -c 'import sys; print("python%d.%d" % sys.version_info[:2])') ${ESDK_PINS[*]}"
  if fresh venv "$want" "$SYNAPSE_PEERS_PYTHON"; then return; fi
  log "creating $venv"
  local t0=$SECONDS
  rm -f "$cache/stamps/venv" && rm -rf "$venv"
  "$py" -m venv "$venv" || die "'$py -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${ESDK_PINS[@]}"
  "$venv/bin/python" -c 'import aws_encryption_sdk' || die "venv: aws_encryption_sdk does not import"
  stamp venv "$want"
  log "venv ready in $((SECONDS - t0)) s"
}

# The Synapse venv: built with a Python that uid 991 can run (not one under a 0700 home, such
# as pyenv's), in $SYNAPSE_VENV (env.sh), then checked by importing synapse as 991 when root.
synapse_peer() {
  local py="${SYNAPSE_PYTHON:-}" venv="$SYNAPSE_VENV"
  if [[ -z $py ]]; then
    if [[ -x /usr/bin/python3 ]]; then py=/usr/bin/python3; else py=python3; fi
  fi
  command -v "$py" >/dev/null || die "Python 3 is required for Synapse ($py not found)"
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "matrix-synapse 1.163 needs Python >= 3.10; set SYNAPSE_PYTHON to one"
  local want
  want="$("$py" -c 'import sys; print("python%d.%d" % sys.version_info[:2])') $py ${SYNAPSE_PINS[*]}"
  if fresh synapse "$want" "$SYNAPSE_PEERS_SYNAPSE_PYTHON"; then return; fi
  log "creating the Synapse venv $venv (matrix-synapse ${SYNAPSE_PINS[0]#*==})"
  local t0=$SECONDS
  rm -f "$cache/stamps/synapse" && rm -rf "$venv"
  mkdir -p "$(dirname "$venv")" && chmod 755 "$(dirname "$venv")"
  "$py" -m venv "$venv" || die "'$py -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --only-binary=:all: "${SYNAPSE_PINS[@]}"
  chmod -R a+rX "$venv"
  if [[ $(id -u) == 0 ]] && command -v setpriv >/dev/null; then
    setpriv --reuid 991 --regid 991 --clear-groups "$venv/bin/python" -c 'import synapse.app.homeserver' ||
      die "the Synapse venv $venv cannot be used by uid 991 (is a parent directory 0700?)"
  else
    "$venv/bin/python" -c 'import synapse.app.homeserver' || die "synapse does not import"
  fi
  stamp synapse "$want"
  log "Synapse venv ready in $((SECONDS - t0)) s"
}

if ((want_pebble)); then
  go_peer pebble "$PEBBLE_MODULE" "$PEBBLE_PKG" "$PEBBLE_VERSION" module "$PEBBLE_BIN"
fi
if ((want_minio)); then
  go_peer minio "$MINIO_MODULE" "$MINIO_MODULE" "$MINIO_VERSION" install "$MINIO_BIN"
fi
if ((want_actionlint)); then
  go_peer actionlint "$ACTIONLINT_MODULE" "$ACTIONLINT_PKG" "$ACTIONLINT_VERSION" module "$ACTIONLINT_BIN"
fi
if ((want_esdk)); then venv_peer; fi
if ((want_synapse)); then synapse_peer; fi
if ((want_kube)); then
  # shellcheck source=kube.sh
  . "$here/kube.sh"
  kube_peers
fi

if ((want_pebble)); then echo "pebble  $PEBBLE_BIN  ($(cat "$cache/stamps/pebble"))"; fi
if ((want_minio)); then echo "minio   $MINIO_BIN  ($(cat "$cache/stamps/minio"))"; fi
if ((want_esdk)); then
  echo "python  $SYNAPSE_PEERS_PYTHON  (aws-encryption-sdk ${ESDK_PINS[0]#*==})"
fi
if ((want_kube)); then
  echo "kube    $KUBE_APISERVER_BIN  ($(cat "$cache/stamps/kube-apiserver"))"
  echo "        $ETCD_BIN  ($(cat "$cache/stamps/etcd"))"
  echo "        $TEST_KUBELET_BIN  ($(cat "$cache/stamps/test-kubelet"))"
fi
if ((want_synapse)); then
  echo "synapse $SYNAPSE_PEERS_SYNAPSE_PYTHON  (${SYNAPSE_PINS[0]})"
fi
if ((want_actionlint)); then echo "actionlint $ACTIONLINT_BIN  ($(cat "$cache/stamps/actionlint"))"; fi
if ((want_pebble && want_minio && want_esdk && want_kube && want_synapse && want_actionlint)); then
  echo "tests:  . scripts/peers/env.sh && npx jest"
fi
