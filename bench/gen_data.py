"""Generates a Synapse-like data directory of a given size for `npm run bench`.

Usage: python3 bench/gen_data.py DIR SIZE_MIB [--seed N]
       python3 bench/gen_data.py DIR 0 --files N      (the file-count case)

Layout, after what a real SQLite-backed Synapse keeps in its data dir:
  homeserver.yaml, <server>.signing.key, <server>.log.config
  homeserver.db                   a real SQLite database, 1/8 of SIZE (events with random JSON
                                  bodies and random blobs), so the engine's online snapshot works
  media_store/local_content/aa/bb/<id>     media: sizes 10 KiB .. 20 MiB, skewed small
  media_store/local_thumbnails/aa/bb/<id>/<w>-<h>-<type>   two thumbnails per media, 10..64 KiB
  media_store/remote_content, url_cache  a little of what a backup must skip
With --files N (the file-count case): the same config files and a small homeserver.db (1 MiB),
then N small files laid out as Synapse lays out media, one directory per media:
  media_store/local_content/aa/bb/<id>                          the media, 1..8 KiB
  media_store/local_thumbnails/aa/bb/<id>/<w>-<h>-<type>-<method>  two thumbnails, 256 B..4 KiB
(N / 3 media, each with its two thumbnails: about 3.4 KiB a file on average).
File contents are slices, at random offsets, of a 64 MiB pool from os.urandom: incompressible
(as real media is; no compressor in the benchmark has a window anywhere near 64 MiB) and
written at disk speed rather than at the kernel RNG's. Sizes, offsets and names come from
a seeded PRNG, so the same SIZE and seed give the same tree shape. Writes DIR/.bench-stamp last:
a directory without it is incomplete and is regenerated.
"""

import argparse
import json
import os
import random
import shutil
import sqlite3
import string
import sys
import time

KIB = 1024
MIB = 1024 * 1024
STAMP = ".bench-stamp"
GENERATOR_VERSION = 2
POOL = os.urandom(64 * MIB)
_rng = random.Random(0)


def write_random(path: str, size: int) -> None:
    view = memoryview(POOL)
    with open(path, "wb") as f:
        at = _rng.randrange(len(POOL))
        left = size
        while left > 0:
            n = min(left, len(POOL) - at)
            f.write(view[at : at + n])
            left -= n
            at = 0


def media_id(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters) for _ in range(24))


def make_db(path: str, size: int, rng: random.Random) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute(
        "CREATE TABLE event_json (event_id TEXT PRIMARY KEY, room_id TEXT, json TEXT, blob BLOB)"
    )
    db.execute(
        "CREATE TABLE e2e_one_time_keys_json (user_id TEXT, device_id TEXT, key_id TEXT, key_json TEXT)"
    )
    db.executemany(
        "INSERT INTO e2e_one_time_keys_json VALUES (?, ?, ?, ?)",
        [("@alice:bench.example", "DEV", f"signed_curve25519:{i}", "{}") for i in range(50)],
    )
    written = 0
    batch = []
    n = 0
    while written < size:
        n_body = rng.randint(256, 3 * KIB)
        at = rng.randrange(len(POOL) - n_body)
        body = POOL[at : at + n_body]
        event = json.dumps({"type": "m.room.message", "content": {"body": body[:64].hex()}})
        batch.append((f"${n}:bench.example", f"!room{n % 97}:bench.example", event, body))
        written += len(body) + len(event) + 60
        n += 1
        if len(batch) >= 5000:
            db.executemany("INSERT INTO event_json VALUES (?, ?, ?, ?)", batch)
            batch.clear()
    if batch:
        db.executemany("INSERT INTO event_json VALUES (?, ?, ?, ?)", batch)
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()


def generate(root: str, size_mib: int, seed: int) -> dict:
    rng = random.Random(seed)
    _rng.seed(seed + 1)
    total = size_mib * MIB
    os.makedirs(root)
    with open(os.path.join(root, "homeserver.yaml"), "w") as f:
        f.write('server_name: "bench.example"\ndatabase:\n  name: sqlite3\n')
        f.write("  args:\n    database: /data/homeserver.db\nmedia_store_path: /data/media_store\n")
    with open(os.path.join(root, "bench.example.signing.key"), "w") as f:
        f.write("ed25519 a_bEnC " + os.urandom(32).hex() + "\n")
    os.chmod(os.path.join(root, "bench.example.signing.key"), 0o600)
    with open(os.path.join(root, "bench.example.log.config"), "w") as f:
        f.write("version: 1\nroot:\n  level: INFO\n")

    db_size = total // 8
    make_db(os.path.join(root, "homeserver.db"), db_size, rng)
    used = os.path.getsize(os.path.join(root, "homeserver.db"))

    media = thumbs = 0
    content = os.path.join(root, "media_store", "local_content")
    thumbnails = os.path.join(root, "media_store", "local_thumbnails")
    while used < total:
        # 10 KiB .. 20 MiB, skewed small (mean ~1 MiB): most media are images, a few videos.
        size = int(10 * KIB * 2048 ** (rng.random() ** 3))
        size = min(size, total - used) if total - used > 10 * KIB else size
        mid = media_id(rng)
        d = os.path.join(content, mid[:2], mid[2:4])
        os.makedirs(d, exist_ok=True)
        write_random(os.path.join(d, mid[4:]), size)
        used += size
        media += 1
        td = os.path.join(thumbnails, mid[:2], mid[2:4], mid[4:])
        os.makedirs(td, exist_ok=True)
        for w, h in ((32, 32), (320, 240)):
            tsize = rng.randint(10 * KIB, 64 * KIB)
            write_random(os.path.join(td, f"{w}-{h}-image-jpeg-scale"), tsize)
            used += tsize
            thumbs += 1

    # What a backup must skip: a little, so that skipping it is visible but cheap.
    for skipped in ("remote_content/xy/zz/remote1", "url_cache/2024-01-01/abc"):
        p = os.path.join(root, "media_store", skipped)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        write_random(p, 256 * KIB)
    return {"media": media, "thumbnails": thumbs, "bytes": used, "dbBytes": db_size}


def generate_files(root: str, files: int, seed: int) -> dict:
    """The file-count case: `files` small files, a directory per media (see the docstring)."""
    rng = random.Random(seed)
    _rng.seed(seed + 1)
    os.makedirs(root)
    with open(os.path.join(root, "homeserver.yaml"), "w") as f:
        f.write('server_name: "bench.example"\ndatabase:\n  name: sqlite3\n')
        f.write("  args:\n    database: /data/homeserver.db\nmedia_store_path: /data/media_store\n")
    with open(os.path.join(root, "bench.example.signing.key"), "w") as f:
        f.write("ed25519 a_bEnC " + os.urandom(32).hex() + "\n")
    os.chmod(os.path.join(root, "bench.example.signing.key"), 0o600)
    with open(os.path.join(root, "bench.example.log.config"), "w") as f:
        f.write("version: 1\nroot:\n  level: INFO\n")
    make_db(os.path.join(root, "homeserver.db"), MIB, rng)
    content = os.path.join(root, "media_store", "local_content")
    thumbnails = os.path.join(root, "media_store", "local_thumbnails")
    made = used = media = 0
    while made < files:
        mid = media_id(rng)
        d = os.path.join(content, mid[:2], mid[2:4])
        os.makedirs(d, exist_ok=True)
        size = rng.randint(KIB, 8 * KIB)
        write_random(os.path.join(d, mid[4:]), size)
        used += size
        made += 1
        media += 1
        td = os.path.join(thumbnails, mid[:2], mid[2:4], mid[4:])
        os.makedirs(td, exist_ok=True)
        for w, h in ((32, 32), (320, 240)):
            if made >= files:
                break
            tsize = rng.randint(256, 4 * KIB)
            write_random(os.path.join(td, f"{w}-{h}-image-jpeg-scale"), tsize)
            used += tsize
            made += 1
    for skipped in ("remote_content/xy/zz/remote1", "url_cache/2024-01-01/abc"):
        p = os.path.join(root, "media_store", skipped)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        write_random(p, 4 * KIB)
    return {"media": media, "files": made, "bytes": used}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir")
    parser.add_argument("size_mib", type=int)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--files", type=int, default=0)
    args = parser.parse_args()
    want = {"version": GENERATOR_VERSION, "sizeMiB": args.size_mib, "seed": args.seed}
    if args.files:
        want["files"] = args.files
    stamp = os.path.join(args.dir, STAMP)
    try:
        with open(stamp) as f:
            have = json.load(f)
        if all(have.get(k) == v for k, v in want.items()):
            print(json.dumps({**have, "cached": True}))
            return 0
    except (OSError, ValueError):
        pass
    shutil.rmtree(args.dir, ignore_errors=True)
    t0 = time.monotonic()
    if args.files:
        info = generate_files(args.dir, args.files, args.seed)
    else:
        info = generate(args.dir, args.size_mib, args.seed)
    info = {**want, **info, "seconds": round(time.monotonic() - t0, 1)}
    with open(stamp, "w") as f:
        json.dump(info, f)
    print(json.dumps({**info, "cached": False}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
