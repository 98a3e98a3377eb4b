# shellcheck shell=sh
# Source me (`. scripts/peers/env.sh`) to point tests at the peers built by install.sh.
# Paths only: install.sh builds them; tests/support/peers.ts checks that they exist.
SYNAPSE_PEERS_CACHE="${SYNAPSE_PEERS_CACHE:-$HOME/.cache/synapse-backup-peers}"
SYNAPSE_PEERS_BIN="$SYNAPSE_PEERS_CACHE/bin"
PEBBLE_BIN="$SYNAPSE_PEERS_BIN/pebble"
MINIO_BIN="$SYNAPSE_PEERS_BIN/minio"
# The GitHub workflows' linter (.ci/run).
ACTIONLINT_BIN="$SYNAPSE_PEERS_BIN/actionlint"
SYNAPSE_PEERS_PYTHON="$SYNAPSE_PEERS_CACHE/venv/bin/python"
# matrix-synapse's venv. Tests run Synapse as uid 991 (like the official image), which cannot
# enter a 0700 home directory: as root it defaults to /var/cache, elsewhere to the cache.
if [ -z "${SYNAPSE_VENV:-}" ]; then
  if [ "$(id -u)" = 0 ]; then
    SYNAPSE_VENV=/var/cache/synapse-backup-peers/synapse-venv
  else
    SYNAPSE_VENV="$SYNAPSE_PEERS_CACHE/synapse-venv"
  fi
fi
SYNAPSE_PEERS_SYNAPSE_PYTHON="$SYNAPSE_VENV/bin/python"
# The Kubernetes exec rig (scripts/peers/kube.sh).
KUBE_APISERVER_BIN="$SYNAPSE_PEERS_BIN/kube-apiserver"
ETCD_BIN="$SYNAPSE_PEERS_BIN/etcd"
TEST_KUBELET_BIN="$SYNAPSE_PEERS_BIN/test-kubelet"
export SYNAPSE_PEERS_BIN PEBBLE_BIN MINIO_BIN ACTIONLINT_BIN SYNAPSE_PEERS_PYTHON
export KUBE_APISERVER_BIN ETCD_BIN TEST_KUBELET_BIN SYNAPSE_VENV SYNAPSE_PEERS_SYNAPSE_PYTHON
