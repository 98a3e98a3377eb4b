/**
 * Issue 15, part A: a backup reported complete is always restorable. Create applies
 * restore's entry policy (entries without data that restore refuses are left out and
 * named; anything else it refuses fails the create), accepts a live server's media
 * that change or vanish while tar reads them (named as warnings), and refuses a
 * selection without a regular file. Every rule on both sides: what create stores,
 * verify and restore accept.
 */
import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import type { BackupEngine } from '../src/backup/engine';
import type { Manifest } from '../src/backup/manifest';
import type { EngineOptions } from '../src/backup/types';
import { LocalWorkload } from '../src/workload/local';
import { PebbleWorkload } from '../src/workload/pebble';
import type { Workload } from '../src/workload/workload';
import { minioEngine } from './support/engines';
import {
  type MinioPeer,
  type PebblePeer,
  describeWithPeers,
  startMinio,
  startPebble,
  tmpDir,
} from './support/peers';
import { makeSynapseTree, snapshotTree, withoutSkipped } from './support/synapse-tree';
import { MutateAtMarker } from './support/workloads';

const PASSPHRASE = 'correct horse battery staple';
const LC = 'media_store/local_content';
const IS_ROOT = process.getuid?.() === 0;

/** A unix socket bound at `file` (left behind when the server closes: unlink is ours). */
async function makeSocket(file: string): Promise<void> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(file, resolve);
  });
  // Closing a listening unix server unlinks its file: keep the file, drop the server.
  server.unref();
}

function sh(script: string, cwd: string): void {
  const out = spawnSync('sh', ['-c', script], { cwd, encoding: 'utf8' });
  if (out.status !== 0) throw new Error(`${script}: ${out.stderr}`);
}

/** What GNU tar and Python's tarfile list of a plaintext archive (both must read it). */
function readersList(archive: Buffer): { gnu: string[]; python: string[] } {
  const gnu = spawnSync('tar', ['-t', '-f', '-'], { input: archive, encoding: 'utf8' });
  expect(gnu.stderr).toBe('');
  expect(gnu.status).toBe(0);
  const py = spawnSync(
    'python3',
    [
      '-c',
      // A newline in a name as GNU tar shows it (\n).
      'import sys, tarfile\nwith tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as t:\n    for m in t: print(m.name.replace(chr(10), chr(92) + "n"))',
    ],
    { input: archive, encoding: 'utf8' },
  );
  expect(py.stderr).toBe('');
  expect(py.status).toBe(0);
  const lines = (s: string) => s.split('\n').filter(Boolean);
  return { gnu: lines(gnu.stdout), python: lines(py.stdout) };
}

async function plaintextOf(engine: BackupEngine, id: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      chunks.push(chunk);
      done();
    },
  });
  await engine.decryptTo(id, sink);
  return Buffer.concat(chunks);
}

type Transport = 'local' | 'pebble';

for (const transport of ['local', 'pebble'] as Transport[]) {
  describeWithPeers(transport === 'pebble' ? ['minio', 'pebble'] : ['minio'])(
    `create applies restore's entry policy (${transport} transport)`,
    () => {
      let minio: MinioPeer;
      let pebble: PebblePeer | undefined;
      let workload: Workload;
      const prefix = `entry-policy/${transport}`;

      beforeAll(async () => {
        minio = await startMinio();
        if (transport === 'pebble') {
          pebble = await startPebble();
          workload = new PebbleWorkload({ socketPath: pebble.socketPath });
        } else {
          workload = new LocalWorkload();
        }
      });
      afterAll(async () => {
        await pebble?.stop();
        await minio?.stop();
      });

      const engineFor = (dataDir: string, extra: Partial<EngineOptions> = {}) =>
        minioEngine(minio, prefix, { passphrase: PASSPHRASE, workload, dataDir, ...extra });

      const manifestOf = async (id: string): Promise<Manifest> => {
        const got = await minio.client.send(
          new GetObjectCommand({ Bucket: minio.bucket, Key: `${prefix}/${id}.manifest.json` }),
        );
        return JSON.parse(await got.Body!.transformToString()) as Manifest;
      };

      /** Nothing of `id` in the store: no backup (complete or not), no upload, no marker. */
      const expectNothingStored = async (engine: BackupEngine, id: string) => {
        const listed = await engine.list();
        expect(listed.backups.filter((b) => b.backupId === id)).toEqual([]);
        expect(listed.uploads.filter((u) => u.key.includes(id))).toEqual([]);
      };

      test('sockets, FIFOs, device nodes and hard links to them are left out and named; verify and restore of that backup succeed', async () => {
        const src = await tmpDir('entry-src');
        const dst = await tmpDir('entry-dst');
        await makeSynapseTree(src.path, { mediaFiles: 3 });
        const expected = withoutSkipped(await snapshotTree(src.path));
        const ab = path.join(src.path, LC, 'ab');
        sh('mkfifo p && ln p p-link', ab);
        // A name over 100 bytes: GNU tar puts a pax header before the FIFO's, which must go too.
        const longName = `${'long-fifo-'.repeat(12)}é`;
        sh(`mkfifo '${longName}'`, ab);
        await makeSocket(path.join(ab, 's'));
        // mknod needs root; under CI=true a non-root run fails here instead of skipping.
        if (IS_ROOT || process.env.CI === 'true') sh('mknod c c 1 3 && mknod b b 7 0', ab);
        const devices = IS_ROOT || process.env.CI === 'true' ? ['c', 'b'] : [];

        const engine = engineFor(src.path);
        const created = await engine.create({ id: 'left-out' });
        const kinds: Record<string, string> = {
          p: 'fifo',
          'p-link': 'fifo',
          [longName]: 'fifo',
          s: 'socket',
          c: 'character-device',
          b: 'block-device',
        };
        const expectedSkipped = ['p', 'p-link', longName, 's', ...devices]
          .map((n) => ({ path: `${LC}/ab/${n}`, kind: kinds[n] }))
          .sort((x, y) => x.path.localeCompare(y.path));
        const sorted = <T extends { path: string }>(list: T[]) =>
          [...list].sort((x, y) => x.path.localeCompare(y.path));
        expect(sorted(created.skipped)).toEqual(expectedSkipped);
        expect(created.skippedCount).toBe(expectedSkipped.length);
        expect(created.warnings).toEqual([]);
        const manifest = await manifestOf('left-out');
        expect(sorted(manifest.skipped!)).toEqual(expectedSkipped);
        expect(manifest.skippedCount).toBe(expectedSkipped.length);
        expect(manifest.warnings).toBeUndefined();

        // The stored archive: a plain tar both readers list, without the left-out entries,
        // whose counts and SHA-256 are what verify finds.
        const listedNames = readersList(await plaintextOf(engine, 'left-out'));
        expect(listedNames.python.map((n) => n.replace(/\/$/, ''))).toEqual(
          listedNames.gnu.map((n) => n.replace(/\/$/, '')),
        );
        for (const { path: p } of expectedSkipped) expect(listedNames.gnu).not.toContain(p);
        expect(listedNames.gnu).toContain(`${LC}/ab/cd/file0`);
        expect(manifest.entries).toBe(listedNames.gnu.length);
        const verified = await engine.verify('left-out');
        expect(verified).toMatchObject({ files: created.files, sha256: created.sha256 });

        const restored = await engineFor(dst.path).restore({ id: 'left-out' });
        expect(restored.files).toBe(created.files);
        const actual = await snapshotTree(dst.path);
        expected.delete('homeserver.db');
        actual.delete('homeserver.db');
        expect(actual).toEqual(expected);
        engine.close();
      });

      test.each([
        ['an absolute symlink', '/etc/passwd', 'points to the absolute path "/etc/passwd"'],
        [
          'a relative symlink leading outside',
          '../../../../etc/passwd',
          'points outside the data directory ("../../../../etc/passwd")',
        ],
      ])(
        '%s in local_content fails the create, naming it and what to do; nothing is stored',
        async (_what, target, said) => {
          const src = await tmpDir('entry-symlink');
          await makeSynapseTree(src.path, { mediaFiles: 2 });
          await fsp.symlink(target, path.join(src.path, LC, 'ab/passwd'));
          const engine = engineFor(src.path);
          const err = await engine.create({ id: 'symlinked' }).then(
            () => undefined,
            (e: unknown) => e,
          );
          expect(err).toMatchObject({
            code: 'unrestorable-entry',
            message: `cannot back up: symlink "${LC}/ab/passwd" ${said}; a restore refuses such an entry, so no backup was stored`,
            remedy: {
              kind: 'advice',
              text: 'replace the symlink with a copy of what it points to (or a relative link that stays inside the data directory), or remove it, then create the backup again',
            },
          });
          await expectNothingStored(engine, 'symlinked');
          engine.close();
        },
      );

      test('a hard-linked symlink (GNU tar writes a hard link to a symlink, which restore refuses) fails the create; nothing stored', async () => {
        const src = await tmpDir('entry-hardlinked-symlink');
        await makeSynapseTree(src.path, { mediaFiles: 2 });
        sh('ln -s cd/file0 s && ln s t', path.join(src.path, LC, 'ab'));
        const engine = engineFor(src.path);
        const err = await engine.create({ id: 'hardlinked' }).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toMatchObject({
          code: 'unrestorable-entry',
          message: expect.stringMatching(
            new RegExp(
              `^cannot back up: hard link "${LC}/ab/[st]" points to "${LC}/ab/[st]", which is not a file earlier in the archive; a restore refuses such an entry, so no backup was stored$`,
            ),
          ),
          remedy: {
            kind: 'advice',
            text: 'replace the hard link with a copy of the file, then create the backup again',
          },
        });
        await expectNothingStored(engine, 'hardlinked');
        engine.close();
      });

      test('only empty media folders: empty-selection, saying what was looked for and where; nothing stored', async () => {
        const src = await tmpDir('entry-empty');
        await fsp.mkdir(path.join(src.path, LC), { recursive: true });
        await fsp.mkdir(path.join(src.path, 'media_store/local_thumbnails'), { recursive: true });
        const engine = engineFor(src.path);
        await expect(engine.create({ id: 'empty-media' })).rejects.toMatchObject({
          code: 'empty-selection',
          message: `nothing to back up in ${src.path}: no regular file in what this run selected (no homeserver.yaml in ${src.path}, so Synapse's default paths; the media store ${src.path}/media_store (local_content: no regular file, local_thumbnails: no regular file); the SQLite database ${src.path}/homeserver.db (missing); no *.key, *.yaml, *.yml or *.log.config file in ${src.path})`,
          remedy: { kind: 'data-dir' },
        });
        await expectNothingStored(engine, 'empty-media');
        engine.close();
      });

      test('only entries a backup leaves out: empty-selection names them; nothing stored', async () => {
        const src = await tmpDir('entry-fifos');
        await fsp.mkdir(path.join(src.path, LC, 'ab'), { recursive: true });
        sh('mkfifo p', path.join(src.path, LC, 'ab'));
        const engine = engineFor(src.path);
        await expect(engine.create({ id: 'only-fifo' })).rejects.toMatchObject({
          code: 'empty-selection',
          message: expect.stringMatching(
            new RegExp(
              `^nothing to back up in ${src.path}: no regular file in what this run selected \\(.*\\), only 1 socket\\(s\\), FIFO\\(s\\) or device node\\(s\\), which a backup leaves out \\(${LC}/ab/p\\)$`,
            ),
          ),
        });
        await expectNothingStored(engine, 'only-fifo');
        engine.close();
      });

      test('a live server: media removed while tar reads their directory are warnings; the backup verifies and restores', async () => {
        const src = await tmpDir('entry-live');
        const dst = await tmpDir('entry-live-dst');
        await makeSynapseTree(src.path, { mediaFiles: 2 });
        const ab = path.join(src.path, LC, 'gone');
        await fsp.mkdir(path.join(ab, 'sub'), { recursive: true });
        await fsp.writeFile(path.join(ab, 'sub/x'), 'x');
        // Bigger than every buffer between tar and the engine: tar is held inside one of them.
        for (const f of ['f1', 'f2', 'f3']) {
          await fsp.writeFile(path.join(ab, f), '');
          await fsp.truncate(path.join(ab, f), 16 * 1024 * 1024);
        }
        const held = new MutateAtMarker(workload, Buffer.from(`${LC}/gone/\0`), () =>
          fsp.rm(ab, { recursive: true }),
        );
        const engine = engineFor(src.path, { workload: held });
        const created = await engine.create({ id: 'live-removed' });
        expect(held.mutated).toBe(true);
        const byPath = new Map(created.warnings.map((w) => [w.path, w.kind]));
        // The one tar was reading changed (unlinked under it); the others were removed first.
        for (const f of ['f1', 'f2', 'f3', 'sub']) {
          expect(['changed', 'removed']).toContain(byPath.get(`${LC}/gone/${f}`));
        }
        expect(byPath.get(`${LC}/gone/sub`)).toBe('removed');
        expect([...byPath.keys()].every((p) => p === LC || p.startsWith(`${LC}/`))).toBe(true);
        expect(created.warningsCount).toBe(created.warnings.length);
        const manifest = await manifestOf('live-removed');
        expect(manifest.warnings).toEqual(created.warnings);
        expect(await engine.verify('live-removed')).toMatchObject({ sha256: created.sha256 });
        const restored = await engineFor(dst.path).restore({ id: 'live-removed' });
        expect(restored.files).toBe(created.files);
        expect(await fsp.readFile(path.join(dst.path, 'homeserver.yaml'), 'utf8')).toContain(
          'example.org',
        );
        engine.close();
      });

      test('a live server: a media file that grows while read is a warning, archived as tar found it', async () => {
        const src = await tmpDir('entry-grow');
        await makeSynapseTree(src.path, { mediaFiles: 2 });
        const file = path.join(src.path, LC, 'growing/upload');
        await fsp.mkdir(path.dirname(file), { recursive: true });
        await fsp.writeFile(file, '');
        await fsp.truncate(file, 16 * 1024 * 1024);
        const held = new MutateAtMarker(workload, Buffer.from(`${LC}/growing/upload\0`), () =>
          fsp.appendFile(file, Buffer.alloc(4096, 1)),
        );
        const engine = engineFor(src.path, { workload: held });
        const created = await engine.create({ id: 'live-grown' });
        expect(created.warnings).toEqual([{ path: `${LC}/growing/upload`, kind: 'changed' }]);
        expect(await engine.verify('live-grown')).toMatchObject({ sha256: created.sha256 });
        engine.close();
      });

      test('a live server: a non-media file that changes while read still fails the create; nothing stored', async () => {
        const src = await tmpDir('entry-nonmedia');
        await makeSynapseTree(src.path, { mediaFiles: 2 });
        const file = path.join(src.path, 'example.org.log.config');
        await fsp.truncate(file, 16 * 1024 * 1024);
        const held = new MutateAtMarker(workload, Buffer.from('example.org.log.config\0'), () =>
          fsp.appendFile(file, 'more\n'),
        );
        const engine = engineFor(src.path, { workload: held });
        await expect(engine.create({ id: 'live-config' })).rejects.toMatchObject({
          code: 'workload-command',
          message: `tar in ${workload.description} exited with status 1: tar: example.org.log.config: file changed as we read it`,
        });
        await expectNothingStored(engine, 'live-config');
        engine.close();
      });
    },
  );
}
