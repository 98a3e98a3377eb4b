#!/usr/bin/env bash
# `npm run bench`: our engine against the alternatives, on generated Synapse data, against a
# local MinIO; prints a table and writes bench-results/latest.json (see bench/run.ts).
#
#   1. tools: GNU tar, GNU time, gpg, curl (apt-get installs missing ones when run as root)
#   2. builds build/synapse-backup.js if the sources changed, bundles the bench drivers
#   3. peers: MinIO and Pebble (scripts/peers/install.sh: cached after the first build, ~6 min),
#      and the Kubernetes rig for the kube case (etcd, kube-apiserver: 12-16 min the first time)
#   4. meanwhile, a Python venv for the baselines: awscli, boto3 and aws-encryption-sdk, all
#      pinned (cached in $SYNAPSE_BENCH_CACHE, default ~/.cache/synapse-backup-bench)
#   5. meanwhile, Synapse-like data dirs of each size (bench/gen_data.py; cached, ~15 s per GiB)
#      and, for the files case, media stores of 50k, 100k and 200k small files (~2 min in all)
#   6. runs everything: node .bench/run.js
#   7. the multipart uploader alone, ours against @aws-sdk/lib-storage: node .bench/upload-ab.js
#      (bench/upload-ab.ts: 2 runs of each at the first size, 1 at the others)
#
# Settings (environment):
#   BENCH_SIZES=1024,4096      data sizes in MiB; ours and the floor run at each
#   BENCH_BASELINES_AT=1024    sizes at which gpg, the seed's design and ours-local also run
#   BENCH_REPEAT=3             runs of ours (pebble) and the floor at the first size (median kept)
#   BENCH_MINIO_DIR=           where MinIO keeps data (default: /dev/shm when it has room)
#   BENCH_CASES=sizes,files,kube,stage,upload-ab   what runs (default: all):
#                              sizes: 1/4 GiB rows; files: the file-count rows; kube: ours through
#                              the Kubernetes API's exec at the first size; stage: the in-memory
#                              crypto stages; upload-ab: the uploader alone
#   BENCH_FILES=50000,100000,200000   file counts of the files case
#   BENCH_SKIP=                any of: seed,gpg,local,relay,floor,ours,kube,upload-ab
# Extra arguments go to bench/run.ts (e.g. `npm run bench -- --out /tmp/x.json`).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cache="${SYNAPSE_BENCH_CACHE:-$HOME/.cache/synapse-backup-bench}"
sizes="${BENCH_SIZES:-1024,4096}"
baselines_at="${BENCH_BASELINES_AT:-${sizes%%,*}}"
repeat="${BENCH_REPEAT:-3}"
skip="${BENCH_SKIP:-}"
cases="${BENCH_CASES:-sizes,files,kube,stage,upload-ab}"
files="${BENCH_FILES:-50000,100000,200000}"
has_case() { [[ ",$cases," == *",$1,"* ]]; }
# The upload A/B is skipped by either setting.
if ! has_case upload-ab; then skip="${skip:+$skip,}upload-ab"; fi
run_cases="$(tr ',' '\n' <<<"$cases" | grep -vx upload-ab | paste -sd, -)"

# awscli's pins are those of scripts/peers/install.sh's ESDK venv plus what awscli needs.
BENCH_PINS=(
  awscli==1.46.3 aws-encryption-sdk==4.0.7
  attrs==26.1.0 boto3==1.44.8 botocore==1.44.8 cffi==2.1.1 colorama==0.4.6
  cryptography==50.0.2 docutils==0.19 jmespath==1.1.0 pyasn1==0.6.5 pycparser==3.12
  python-dateutil==2.9.0.post0 PyYAML==6.0.4 rsa==4.7.2 s3transfer==0.19.3 six==1.17.0
  urllib3==2.8.0 wrapt==2.5.2
)

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'bench.sh: %s\n' "$*" >&2
  exit 1
}
t_start=$SECONDS

# ---------------------------------------------------------------- 1. tools
missing=()
tar --version 2>/dev/null | grep -q 'GNU tar' || missing+=(tar)
[[ -x /usr/bin/time ]] || missing+=(time)
command -v gpg >/dev/null || missing+=(gnupg)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    die "missing tools: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})"
  fi
fi
for tool in node python3; do command -v "$tool" >/dev/null || die "$tool is required"; done

# ---------------------------------------------------------------- 2. build
cli_js="$repo/build/synapse-backup.js"
if [[ ! -f "$cli_js" || -n "$(find src scripts/bundle.mjs package.json package-lock.json \
  tsconfig.json tsconfig.build.json -newer "$cli_js" -print -quit)" ]]; then
  log "building build/synapse-backup.js"
  npm run --silent build
fi
mkdir -p .bench
for driver in run crypto-stage upload-ab kube-engine; do
  npx --no-install esbuild "bench/$driver.ts" --bundle --platform=node --target=node20 \
    --outfile=".bench/$driver.js" --log-level=warning
done

# ---------------------------------------------------------------- 3-5. peers, venv, data
# The venv (network, pip) and the data (disk) are made while the peers build (CPU): on a
# fresh machine that saves the two or three minutes that keep the whole run under 15.
venv="$cache/venv"
mkdir -p "$cache"

make_venv() {
  local want
  want="$(python3 -c 'import sys; print("python%d.%d" % sys.version_info[:2])') ${BENCH_PINS[*]}"
  if [[ "$(cat "$cache/venv.stamp" 2>/dev/null)" != "$want" || ! -x "$venv/bin/aws" ]]; then
    log "creating $venv (awscli, boto3, aws-encryption-sdk; about a minute)"
    rm -rf "$venv" "$cache/venv.stamp"
    python3 -m venv "$venv" || die "'python3 -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${BENCH_PINS[@]}"
    printf '%s\n' "$want" >"$cache/venv.stamp"
  fi
}

make_data() {
  local size n
  if has_case sizes || has_case kube; then
    IFS=, read -r -a size_list <<<"$sizes"
    for size in "${size_list[@]}"; do
      log "data: $size MiB in $cache/data-$size"
      python3 bench/gen_data.py "$cache/data-$size" "$size" >&2
    done
  fi
  if has_case files; then
    IFS=, read -r -a file_list <<<"$files"
    for n in "${file_list[@]}"; do
      log "data: $n small files in $cache/files-$n"
      python3 bench/gen_data.py "$cache/files-$n" 0 --files "$n" >&2
    done
  fi
}

make_venv &
venv_job=$!
make_data &
data_job=$!
peers=(minio pebble)
if has_case kube; then peers+=(kube); fi
bash scripts/peers/install.sh "${peers[@]}" >&2 || {
  kill "$venv_job" "$data_job" 2>/dev/null || true
  die "building the peers failed (see above)"
}
wait "$venv_job" || die "creating the venv failed (see above)"
wait "$data_job" || die "generating the data failed (see above)"
# shellcheck source=peers/env.sh
. "$repo/scripts/peers/env.sh"

# ---------------------------------------------------------------- 6. run
log "preparation took $((SECONDS - t_start)) s; running the benchmark"
node .bench/run.js --data-root "$cache" --sizes "$sizes" --baselines-at "$baselines_at" \
  --venv "$venv" --repeat "$repeat" --skip "$skip" --cases "$run_cases" --files "$files" "$@"
if [[ ",$skip," != *,upload-ab,* ]]; then
  log "the multipart uploader alone: ours against @aws-sdk/lib-storage"
  node .bench/upload-ab.js --sizes "$sizes" --repeat 2
fi
log "npm run bench took $((SECONDS - t_start)) s"
