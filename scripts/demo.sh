#!/usr/bin/env bash
# `npm run demo`: the backup engine end to end, on this machine, against a real S3 (MinIO).
#
#   1. builds build/synapse-backup.js if it is missing or older than the sources
#   2. installs MinIO (bash scripts/peers/install.sh minio: cached after the first run)
#   3. starts MinIO on a free 127.0.0.1 port with random credentials, makes a bucket
#   4. makes a Synapse-like data dir: config, signing key, an SQLite homeserver.db, ~50 MiB of
#      local media and thumbnails, plus the remote/URL caches that a backup must skip
#   5. runs the CLI: create (JSON), list, verify, then restore into a fresh directory
#   6. compares the restored tree with the source (contents, modes, mtimes) and checks that
#      the caches were not restored and that no secret ever appeared in the CLI's output
#
# Needs: node (after `npm ci`), python3 (sqlite3 module), GNU tar, diffutils, findutils; Go
# for the first MinIO build (minutes). Everything runs in a temp dir removed on exit, and
# MinIO is stopped on exit, also on failure or Ctrl-C. Exits non-zero on any mismatch.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cli_js="$repo/build/synapse-backup.js"

# ---------------------------------------------------------------- output helpers

if [[ -t 1 ]]; then bold=$'\e[1m' green=$'\e[32m' red=$'\e[31m' off=$'\e[0m'; else
  bold='' green='' red='' off=''
fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$off"; }
info() { printf '    %s\n' "$*"; }
indent() { sed 's/^/    /'; }
failed=''
fail() {
  failed=1
  printf '\n%sDEMO FAILED: %s%s\n' "$red" "$*" "$off" >&2
  exit 1
}

# Milliseconds since the epoch.
now_ms() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then
    local t=${EPOCHREALTIME/[.,]/}
    echo $((10#$t / 1000))
  else
    echo $(($(date +%s%N) / 1000000))
  fi
}
# seconds MS: "1.234 s"
seconds() { awk -v ms="$1" 'BEGIN { printf "%.2f s", ms / 1000 }'; }
# human BYTES: "12.3 MiB"
human() {
  awk -v b="$1" 'BEGIN {
    split("B KiB MiB GiB TiB", u, " "); i = 1
    while (b >= 1024 && i < 5) { b /= 1024; i++ }
    if (i == 1) printf "%d %s", b, u[i]; else printf "%.1f %s", b, u[i]
  }'
}
# rate BYTES MS: "45.6 MiB/s"
rate() { [[ $2 -gt 0 ]] && echo "$(human $(($1 * 1000 / $2)))/s" || echo "-"; }
rand_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

for tool in node python3 tar diff find sort od awk; do
  command -v "$tool" >/dev/null || fail "$tool is required"
done
python3 -c 'import sqlite3' 2>/dev/null || fail "python3 has no sqlite3 module"
tar --version 2>/dev/null | grep -q 'GNU tar' || fail "GNU tar is required"

# ---------------------------------------------------------------- temp dir, cleanup

work="$(mktemp -d "${TMPDIR:-/tmp}/synapse-backup-demo.XXXXXX")"
minio_pid=''

stop_minio() {
  [[ -n $minio_pid ]] || return 0
  kill -TERM "$minio_pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$minio_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$minio_pid" 2>/dev/null || true
  wait "$minio_pid" 2>/dev/null || true
  minio_pid=''
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ $rc -ne 0 && -z $failed ]]; then
    printf '\n%sDEMO FAILED (exit status %s)%s\n' "$red" "$rc" "$off" >&2
  fi
  stop_minio
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

demo_start=$(now_ms)

# ---------------------------------------------------------------- 1. build

step "1. Build the CLI bundle"
if [[ ! -f "$cli_js" ]]; then
  reason="build/synapse-backup.js is missing"
elif [[ -n "$(find src scripts/bundle.mjs package.json package-lock.json tsconfig.json \
  tsconfig.build.json -newer "$cli_js" -print -quit)" ]]; then
  reason="sources changed since the last build"
else
  reason=''
fi
if [[ -n $reason ]]; then
  info "$reason: npm run build"
  t0=$(now_ms)
  npm run --silent build 2>&1 | indent
  info "built in $(seconds $(($(now_ms) - t0)))"
else
  info "build/synapse-backup.js is up to date"
fi

# ---------------------------------------------------------------- 2. MinIO

step "2. Install MinIO (cached after the first run)"
bash scripts/peers/install.sh minio 2>&1 | indent
# shellcheck source-path=SCRIPTDIR source=peers/env.sh
. "$repo/scripts/peers/env.sh"
[[ -x "$MINIO_BIN" ]] || fail "MinIO is not at $MINIO_BIN after install.sh"

step "3. Start MinIO on 127.0.0.1 with random credentials"
read -r port console_port < <(node -e '
  const net = require("net");
  const free = () => new Promise((ok) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address(); s.close(() => ok(port));
    });
  });
  (async () => console.log(await free(), await free()))();') || fail "no free port found"
access_key="demo$(rand_hex 6)"
secret_key="$(rand_hex 20)"
passphrase="demo passphrase $(rand_hex 12)"
endpoint="http://127.0.0.1:$port"
bucket="synapse-backups-$(rand_hex 4)"
mkdir -p "$work/minio/data"
MINIO_ROOT_USER="$access_key" MINIO_ROOT_PASSWORD="$secret_key" MINIO_UPDATE=off \
  MINIO_BROWSER=off HOME="$work/minio" \
  "$MINIO_BIN" server "$work/minio/data" --address "127.0.0.1:$port" \
  --console-address "127.0.0.1:$console_port" --certs-dir "$work/minio/certs" \
  >"$work/minio/minio.log" 2>&1 </dev/null &
minio_pid=$!

# The CLI, the S3 helper below and nothing else get the credentials and the passphrase.
export AWS_ACCESS_KEY_ID="$access_key" AWS_SECRET_ACCESS_KEY="$secret_key"
export SYNAPSE_BACKUP_PASSPHRASE="$passphrase"
export AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED=true

# Waits for MinIO to answer, then creates the bucket (there is no CLI command for that).
t0=$(now_ms)
# shellcheck disable=SC2016 # JavaScript in single quotes: its ${...} is JavaScript's
node -e '
  const http = require("http");
  const { S3Client, CreateBucketCommand } = require("@aws-sdk/client-s3");
  const [endpoint, bucket, pid] = process.argv.slice(1);
  const live = () => new Promise((ok) => {
    http.get(`${endpoint}/minio/health/live`, { agent: false, timeout: 1000 }, (res) => {
      res.resume(); ok(res.statusCode === 200);
    }).on("error", () => ok(false)).on("timeout", function () { this.destroy(); });
  });
  (async () => {
    const deadline = Date.now() + 30000;
    while (!(await live())) {
      try { process.kill(Number(pid), 0); } catch { throw new Error("MinIO exited while starting"); }
      if (Date.now() > deadline) throw new Error("MinIO did not answer within 30 s");
      await new Promise((r) => setTimeout(r, 100));
    }
    const s3 = new S3Client({ endpoint, region: "us-east-1", forcePathStyle: true });
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    s3.destroy();
  })().catch((e) => { console.error(`minio: ${e.message}`); process.exit(1); });
' "$endpoint" "$bucket" "$minio_pid" || {
  tail -n 15 "$work/minio/minio.log" | indent >&2
  fail "could not start MinIO or create the bucket"
}
info "MinIO pid $minio_pid at $endpoint, ready in $(seconds $(($(now_ms) - t0)))"
info "bucket \"$bucket\", access key $access_key (secret key and passphrase: random, not shown)"

# ---------------------------------------------------------------- 4. data dir

step "4. Generate a Synapse-like data directory"
src="$work/synapse-data"
restored="$work/restored"
t0=$(now_ms)
python3 - "$src" <<'PY' | indent || fail "could not generate the data directory"
import base64, json, os, random, sqlite3, string, sys, time

root = sys.argv[1]
rng = random.Random()
server = "demo.example.org"
MiB = 1024 * 1024
past = time.time() - 90 * 24 * 3600  # media from the last 90 days


def write(rel, data, mode=0o644, mtime=None):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return len(data)


def media_id():
    return "".join(rng.choice(string.ascii_letters) for _ in range(24))


def media_path(kind, mid):  # Synapse's layout: local_content/ab/cd/efgh...
    return f"media_store/{kind}/{mid[:2]}/{mid[2:4]}/{mid[4:]}"


os.makedirs(root)
write("homeserver.yaml", f"""server_name: "{server}"
pid_file: homeserver.pid
listeners:
  - port: 8008
    tls: false
    type: http
    x_forwarded: true
    resources:
      - names: [client, federation]
        compress: false
database:
  name: sqlite3
  args:
    database: homeserver.db
log_config: "{server}.log.config"
media_store_path: media_store
signing_key_path: "{server}.signing.key"
report_stats: false
trusted_key_servers:
  - server_name: "matrix.org"
""")
key = base64.b64encode(os.urandom(32)).decode().rstrip("=")
write(f"{server}.signing.key", f"ed25519 a_{media_id()[:4]} {key}\n", mode=0o600)
write(f"{server}.log.config", "version: 1\nroot:\n  level: INFO\n  handlers: [console]\n"
      "handlers:\n  console:\n    class: logging.StreamHandler\n")

db = sqlite3.connect(os.path.join(root, "homeserver.db"))
db.executescript("""
CREATE TABLE users (name TEXT PRIMARY KEY, password_hash TEXT, creation_ts BIGINT, admin SMALLINT);
CREATE TABLE rooms (room_id TEXT PRIMARY KEY, creator TEXT, is_public BOOLEAN);
CREATE TABLE events (event_id TEXT PRIMARY KEY, room_id TEXT, sender TEXT, type TEXT,
                     origin_server_ts BIGINT, json TEXT);
CREATE TABLE e2e_one_time_keys_json (user_id TEXT, device_id TEXT, algorithm TEXT,
                                     key_id TEXT, ts_added_ms BIGINT, key_json TEXT);
""")
users = [f"@user{i}:{server}" for i in range(50)]
rooms = [f"!{media_id()[:18]}:{server}" for _ in range(20)]
db.executemany("INSERT INTO users VALUES (?, ?, ?, ?)",
               [(u, "$2b$12$" + media_id() * 2, int(past * 1000), int(i == 0))
                for i, u in enumerate(users)])
db.executemany("INSERT INTO rooms VALUES (?, ?, ?)", [(r, users[0], 0) for r in rooms])
events = []
for i in range(5000):
    room, sender = rng.choice(rooms), rng.choice(users)
    body = " ".join(rng.choice(["hello", "matrix", "backup", "restore", "synapse", "room"])
                    for _ in range(rng.randint(3, 40)))
    event = {"type": "m.room.message", "room_id": room, "sender": sender,
             "content": {"msgtype": "m.text", "body": body}}
    events.append((f"${media_id()}", room, sender, "m.room.message", int(past * 1000) + i,
                   json.dumps(event)))
db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", events)
otks = [(u, "DEVICE", "signed_curve25519", f"AAAA{i}", int(past * 1000),
         json.dumps({"key": base64.b64encode(os.urandom(32)).decode()}))
        for u in users[:10] for i in range(20)]
db.executemany("INSERT INTO e2e_one_time_keys_json VALUES (?, ?, ?, ?, ?, ?)", otks)
db.commit()
db.close()
os.chmod(os.path.join(root, "homeserver.db"), 0o600)

# ~50 MiB of local media (random bytes: incompressible, like photos and videos) and thumbnails.
local = 0
sizes = [16 * MiB, 8 * MiB]
while sum(sizes) < 50 * MiB:
    sizes.append(rng.randint(4 * 1024, 2 * MiB))
for n, size in enumerate(sizes):
    mid = media_id()
    mtime = past + rng.randint(0, 89 * 24 * 3600)
    local += write(media_path("local_content", mid), os.urandom(size), mtime=mtime)
    if n % 3 == 0:
        for w, h in ((32, 32), (96, 96), (320, 240)):
            local += write(f"{media_path('local_thumbnails', mid)}/{w}-{h}-image-jpeg-scale",
                           os.urandom(w * h // 4), mtime=mtime)

# Caches that Synapse refetches or regenerates: a backup must leave them out.
cache = 0
for n in range(12):
    mid = media_id()
    cache += write(f"media_store/remote_content/matrix.org/{mid[:2]}/{mid[2:4]}/{mid[4:]}",
                   os.urandom(rng.randint(64 * 1024, 512 * 1024)))
    cache += write(f"media_store/remote_thumbnails/matrix.org/{mid[:2]}/{mid[2:4]}/{mid[4:]}"
                   "/96-96-image-jpeg-crop", os.urandom(2304))
for n in range(6):
    mid = media_id()
    cache += write(f"media_store/url_cache/2026-01-0{n + 1}/{mid}", os.urandom(32 * 1024))
    cache += write(f"media_store/url_cache_thumbnails/2026-01-0{n + 1}/{mid}/32-32-image-png-crop",
                   os.urandom(256))
print(f"{len(users)} users, {len(rooms)} rooms, {len(events)} events, {len(otks)} one-time keys"
      " in homeserver.db;"
      f" {len(sizes)} local media files")
PY

# tree_stats DIR [find filters...]: "FILES BYTES" of the regular files below DIR.
tree_stats() {
  local dir=$1
  shift
  find "$dir" "$@" -type f -printf '%s\n' | awk '{ n++; b += $1 } END { printf "%d %d\n", n, b }'
}
cache_dirs=(remote_content remote_thumbnails url_cache url_cache_thumbnails)
prune=()
for d in "${cache_dirs[@]}"; do prune+=(-path "*/media_store/$d" -prune -o); done
read -r all_files all_bytes < <(tree_stats "$src")
read -r kept_files kept_bytes < <(tree_stats "$src" "${prune[@]}")
gen_ms=$(($(now_ms) - t0))
info "made $src in $(seconds "$gen_ms"):"
info "  $all_files files, $(human "$all_bytes") in all"
info "  $kept_files files, $(human "$kept_bytes") to back up (config, key, database, local media)"
info "  $((all_files - kept_files)) files, $(human $((all_bytes - kept_bytes))) in the remote/URL caches, to be skipped"

# ---------------------------------------------------------------- 5. the CLI

# cli NAME ARGS...: runs the CLI; stdout to $work/NAME.out, stderr to $work/NAME.err (both
# also kept for the secret check); sets cli_ms. Fails the demo if the CLI fails.
common=(--endpoint "$endpoint" --region us-east-1 --uri-style path --bucket "$bucket"
  --prefix demo)
cli() {
  local name=$1 rc=0 t0
  shift
  t0=$(now_ms)
  node "$cli_js" "$@" "${common[@]}" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
  cli_ms=$(($(now_ms) - t0))
  info "\$ synapse-backup $*   ($(seconds "$cli_ms"))"
  if [[ $rc -ne 0 ]]; then
    indent <"$work/$name.err" >&2
    fail "synapse-backup $1 exited with status $rc"
  fi
  if [[ -s "$work/$name.err" ]]; then indent <"$work/$name.err"; fi
}
# json FILE EXPR: evaluates EXPR on the JSON object `j` parsed from FILE.
json() { node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(eval(process.argv[2]));' "$1" "$2"; }

backup_id="demo-$(date -u +%Y%m%d-%H%M%S)"

step "5. Create a backup (synapse-backup create --json)"
info "(every command below also gets ${common[*]};"
info " the S3 keys and the passphrase reach it through the environment, never as flags)"
cli create create --data-dir "$src" --id "$backup_id" --json
create_ms=$cli_ms
[[ $(wc -l <"$work/create.out") -eq 1 ]] || fail "create --json printed more than one line"
node -e 'console.log(JSON.stringify(JSON.parse(require("fs").readFileSync(process.argv[1])), null, 2))' \
  "$work/create.out" | indent
stored_bytes=$(json "$work/create.out" 'j.size')
archive_bytes=$(json "$work/create.out" 'j["plaintext-bytes"]')
backup_files=$(json "$work/create.out" 'j.files')
backup_sha=$(json "$work/create.out" 'j.sha256')
[[ $(json "$work/create.out" 'j["backup-id"]') == "$backup_id" ]] || fail "create reported another id"
[[ $backup_files -eq $kept_files ]] ||
  fail "the backup holds $backup_files files, the data dir has $kept_files to back up"

step "6. List the backups"
cli list list
indent <"$work/list.out"
grep -Eq "^$backup_id +.* complete$" "$work/list.out" || fail "list does not show $backup_id as complete"
list_ms=$cli_ms

step "7. Verify the backup (download, decrypt, check every byte against the manifest)"
cli verify verify --id "$backup_id"
indent <"$work/verify.out"
grep -q "sha256 $backup_sha" "$work/verify.out" || fail "verify reported another SHA-256"
verify_ms=$cli_ms

step "8. Restore into a fresh directory"
cli restore restore --id "$backup_id" --data-dir "$restored"
indent <"$work/restore.out"
restore_ms=$cli_ms

# ---------------------------------------------------------------- 6. compare

step "9. Compare the restored tree with the source"
t0=$(now_ms)
# homeserver.db is backed up as a snapshot taken with SQLite's online backup API, and restore
# deletes the one-time keys (Synapse's backup guide): it is compared table by table below.
excludes=(--exclude=homeserver.db)
for d in "${cache_dirs[@]}"; do excludes+=(--exclude="$d"); done
if diff -r "${excludes[@]}" "$src" "$restored" >"$work/diff.txt" 2>&1; then
  info "diff -r (without the caches and homeserver.db): identical"
else
  head -n 20 "$work/diff.txt" | indent >&2
  fail "the restored tree differs from the source"
fi
# Type, permissions, size and mtime of every file, and of every directory below media_store
# (the snapshot's size and mtime are its own: only its type and permissions are compared).
listing() {
  (cd "$1" && find . "${prune[@]}" \( -type f -o -type d -path './media_store/*' \) \
    -printf '%y %m %s %T@ %P\n' | sed 's/^f \([0-9]*\) [0-9]* [0-9.]* homeserver\.db$/f \1 - - homeserver.db/' |
    LC_ALL=C sort)
}
listing "$src" | sed 's/^d \([0-9]*\) [0-9]* /d \1 - /' >"$work/src.list"
listing "$restored" | sed 's/^d \([0-9]*\) [0-9]* /d \1 - /' >"$work/restored.list"
if diff "$work/src.list" "$work/restored.list" >"$work/meta-diff.txt"; then
  info "permissions, sizes and mtimes of $(wc -l <"$work/src.list") files and directories: identical"
else
  head -n 20 "$work/meta-diff.txt" | indent >&2
  fail "the restored files differ in permissions, size or mtime"
fi
python3 - "$src/homeserver.db" "$restored/homeserver.db" <<'PY' | indent || fail "the database differs"
import sqlite3, sys

src, dst = (sqlite3.connect(f"file:{p}?mode=ro", uri=True) for p in sys.argv[1:])
check = dst.execute("PRAGMA integrity_check").fetchone()[0]
if check != "ok":
    sys.exit(f"the restored homeserver.db fails PRAGMA integrity_check: {check}")
schema = "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
if src.execute(schema).fetchall() != dst.execute(schema).fetchall():
    sys.exit("the restored homeserver.db has another schema")
rows = otks = 0
for (table,) in src.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
    if table == "e2e_one_time_keys_json":
        otks = src.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        left = dst.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        if left:
            sys.exit(f"the restored homeserver.db still holds {left} one-time keys")
        continue
    a, b = (sorted(db.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr) for db in (src, dst))
    if a != b:
        sys.exit(f"table {table} differs: {len(a)} rows in the source, {len(b)} restored")
    rows += len(a)
print(f"homeserver.db: integrity ok, same schema, same {rows} rows;"
      f" its {otks} one-time keys deleted, as Synapse's backup guide asks")
PY
for d in "${cache_dirs[@]}"; do
  [[ ! -e "$restored/media_store/$d" ]] || fail "media_store/$d was restored: it must be skipped"
done
info "not restored, as intended: ${cache_dirs[*]/#/media_store/}"
read -r restored_files _ < <(tree_stats "$restored")
[[ $restored_files -eq $kept_files ]] ||
  fail "restored $restored_files files, expected $kept_files"
compare_ms=$(($(now_ms) - t0))

# No run of the CLI may print the passphrase or the S3 secret key.
for f in "$work"/{create,list,verify,restore}.{out,err}; do
  if grep -qF -e "$passphrase" -e "$secret_key" "$f"; then
    fail "a secret appeared in the CLI's output ($(basename "$f"))"
  fi
done
info "the passphrase and the S3 secret key appear in no output of the CLI"

# ---------------------------------------------------------------- summary

step "${green}Demo passed${off}${bold}: what it did"
row() { printf '    %-10s %s\n' "$1" "$2"; }
row "data dir" "$all_files files, $(human "$all_bytes"); $kept_files files, $(human "$kept_bytes") selected, $((all_files - kept_files)) cache files skipped"
row "backup" "$backup_id: $backup_files files, $(human "$archive_bytes") tar, $(human "$stored_bytes") encrypted in s3://$bucket/demo/"
row "sha256" "$backup_sha (of the tar)"
row "create" "$(seconds "$create_ms")  ($(rate "$archive_bytes" "$create_ms"): tar, encrypt, multipart upload)"
row "list" "$(seconds "$list_ms")"
row "verify" "$(seconds "$verify_ms")  ($(rate "$archive_bytes" "$verify_ms"): download, decrypt, check)"
row "restore" "$(seconds "$restore_ms")  ($(rate "$archive_bytes" "$restore_ms"): download, decrypt, check, untar)"
row "compare" "$(seconds "$compare_ms"): identical files, permissions and mtimes; same database rows; caches not restored"
row "total" "$(seconds $(($(now_ms) - demo_start))) (timings include node's start, ~0.3 s a run)"
info "(MinIO stopped and $work removed on exit)"
