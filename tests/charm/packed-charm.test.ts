/**
 * The artifact is what gets tested: `scripts/pack-charm.mjs` (what `npm run pack`
 * runs after building) writes the .charm, this test unpacks it with a plain
 * zip reader, checks what Juju and charmcraft's linter look at, and runs ITS
 * dispatch, which runs ITS bundled Node 24, against a real Pebble and MinIO.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import {
  assertFreshBuild,
  describeAction,
  findSecretLeaks,
  JujuHarness,
  REPO_ROOT,
  type DispatchResult,
} from '../support/juju-harness';
import {
  describeWithPeers,
  startMinio,
  startPebble,
  tmpDir,
  type MinioPeer,
  type PebblePeer,
} from '../support/peers';
import { extractZip, type ZipEntry } from '../support/unzip';

const CHARM_NAME = 'synapse_amd64.charm';
const NODE_VERSION = 'v24.21.0';

describeWithPeers(['minio', 'pebble'])('the packed charm', () => {
  let charmFile: string;
  let charmDir: string;
  let entries: ZipEntry[];
  let minio: MinioPeer;
  let pebble: PebblePeer;

  beforeAll(async () => {
    assertFreshBuild();
    const tmp = await tmpDir('packed-charm');
    charmFile = path.join(tmp.path, CHARM_NAME);
    execFileSync('node', [path.join(REPO_ROOT, 'scripts', 'pack-charm.mjs'), '--out', charmFile], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    charmDir = path.join(tmp.path, 'charm');
    entries = extractZip(charmFile, charmDir);
    minio = await startMinio();
    pebble = await startPebble();
  }, 300_000);

  afterAll(async () => {
    await pebble?.stop();
    await minio?.stop();
  });

  it('holds dispatch, the bundle, the runtime, the metadata, README, LICENSE and icon, with Unix modes', () => {
    const byName = new Map(entries.map((e) => [e.name, e]));
    expect([...byName.keys()].filter((n) => !n.endsWith('/')).sort()).toEqual(
      [
        'LICENSE',
        'README.md',
        'icon.svg',
        'actions.yaml',
        'build/charm.js',
        'config.yaml',
        'dispatch',
        'manifest.yaml',
        'metadata.yaml',
        'runtime/bin/node',
      ].sort(),
    );
    for (const exe of ['dispatch', 'build/charm.js', 'runtime/bin/node']) {
      expect([exe, byName.get(exe)?.mode]).toEqual([exe, 0o100755]);
    }
    expect(byName.get('metadata.yaml')?.mode).toBe(0o100644);
    expect(fs.readFileSync(path.join(charmDir, 'LICENSE'), 'utf8')).toMatch(
      /^\s+Apache License\s+Version 2\.0, January 2004/,
    );
    expect(fs.readFileSync(path.join(charmDir, 'icon.svg'), 'utf8')).toMatch(/^<svg [^>]*viewBox=/);
    const size = fs.statSync(charmFile).size;
    console.log(`${CHARM_NAME}: ${size} bytes (${(size / 1024 / 1024).toFixed(1)} MiB)`);
    expect(size).toBeLessThan(80 * 1024 * 1024);
  });

  it("passes charmcraft's entrypoint check: dispatch's last word is an executable file", () => {
    const lines = fs
      .readFileSync(path.join(charmDir, 'dispatch'), 'utf8')
      .split('\n')
      .filter((l) => l.trim());
    expect(lines[0]).toBe('#!/bin/sh');
    const words = lines.at(-1)!.trim().split(/\s+/);
    const entrypoint = path.join(charmDir, words.at(-1)!);
    expect(fs.statSync(entrypoint).isFile()).toBe(true);
    fs.accessSync(entrypoint, fs.constants.X_OK);
  });

  it('carries a Node 24 runtime', () => {
    const version = execFileSync(path.join(charmDir, 'runtime', 'bin', 'node'), ['--version'], {
      encoding: 'utf8',
    }).trim();
    expect(version).toBe(NODE_VERSION);
  });

  it('declares what Juju needs', () => {
    const read = (name: string) =>
      parseYaml(fs.readFileSync(path.join(charmDir, name), 'utf8')) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
    const manifest = read('manifest.yaml');
    expect(manifest.bases).toEqual([
      { name: 'ubuntu', channel: '24.04', architectures: ['amd64'] },
    ]);
    const metadata = read('metadata.yaml');
    expect(metadata.name).toBe('synapse');
    expect(metadata.assumes).toEqual(expect.arrayContaining(['k8s-api', 'juju >= 3.4']));
    expect(metadata.containers.synapse).toEqual({
      resource: 'synapse-image',
      mounts: [{ storage: 'data', location: '/data' }],
    });
    expect(metadata.resources['synapse-image']).toMatchObject({
      type: 'oci-image',
      'upstream-source': expect.stringMatching(/:v\d+\.\d+\.\d+$/),
    });
    expect(metadata.requires.backup).toEqual({ interface: 's3', limit: 1, optional: true });
    expect(metadata.requires.ingress).toEqual({ interface: 'ingress', limit: 1, optional: true });
    // No invented or upstream links: the charm has no public repository yet.
    expect(metadata).not.toHaveProperty('source');
    expect(metadata).not.toHaveProperty('issues');
    expect(metadata.peers).toEqual({ 'synapse-peers': { interface: 'synapse_peers' } });
    expect(metadata.storage.data).toMatchObject({ type: 'filesystem', 'minimum-size': '10G' });
    for (const key of ['docs', 'source', 'issues']) {
      expect([key, metadata[key]]).toEqual([key, expect.not.stringContaining('element-hq')]);
    }
    const config = read('config.yaml').options;
    expect(config['s3-credentials'].type).toBe('secret');
    expect(config['backup-passphrase'].type).toBe('secret');
    for (const option of [
      'server-name',
      's3-endpoint',
      's3-bucket',
      's3-region',
      's3-path',
      's3-uri-style',
      's3-ca-chain',
    ]) {
      expect([option, config[option]?.type]).toEqual([option, 'string']);
    }
    expect(config['s3-credentials'].description).toMatch(
      /juju add-secret[\s\S]*juju grant-secret[\s\S]*juju config/,
    );
    const actions = read('actions.yaml');
    expect(Object.keys(actions).sort()).toEqual([
      'create-backup',
      'delete-backup',
      'list-backups',
      'promote-user-admin',
      'prune-backups',
      'register-user',
      'restore-backup',
      'verify-backup',
    ]);
    for (const [name, action] of Object.entries(actions)) {
      expect([name, action.additionalProperties]).toEqual([name, false]);
      if (name.endsWith('-backup') && name !== 'create-backup') {
        expect([name, action.required]).toEqual([name, ['backup-id']]);
      }
    }
  });

  it('runs its dispatch on its own Node: hooks and actions', async () => {
    const h = await JujuHarness.create({ charmDir, pebbleSocket: pebble.socketPath });
    const outputs: DispatchResult[] = [];
    const passphrase = 'packed charm passphrase';
    h.setConfig({
      'server-name': 'example.com',
      's3-endpoint': minio.endpoint,
      's3-bucket': minio.bucket,
      's3-uri-style': 'path',
      's3-credentials': h.addSecret({
        'access-key': minio.accessKeyId,
        'secret-key': minio.secretAccessKey,
      }),
      'backup-passphrase': h.addSecret({ passphrase }),
    });
    const ready = await h.hook('synapse-pebble-ready');
    outputs.push(ready);
    expect(ready.exitCode).toBe(0);
    expect(ready.status).toEqual({
      status: 'active',
      message: `backups: s3://${minio.bucket} at ${minio.endpoint} (from config)`,
    });
    const debug = ready.calls.find((c) => c.tool === 'juju-log')!.argv.at(-1)!;
    expect(debug).toBe(
      `dispatching hooks/synapse-pebble-ready on node ${NODE_VERSION} (${path.join(fs.realpathSync(charmDir), 'runtime', 'bin', 'node')})`,
    );

    const created = await h.action('create-backup');
    outputs.push(created);
    console.log(describeAction('create-backup (packed charm)', created));
    expect(created.failed).toBe(false);
    const id = created.results['backup-id'] as string;
    const listed = await h.action('list-backups');
    outputs.push(listed);
    console.log(describeAction('list-backups (packed charm)', listed));
    expect((listed.results.backups as Record<string, { status: string }>)[id].status).toBe(
      'complete',
    );
    expect(findSecretLeaks([passphrase, minio.secretAccessKey], h.calls, outputs)).toEqual([]);
  });
});
