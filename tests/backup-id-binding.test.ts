/**
 * Issue #13, case 2: a backup's id is bound into its encrypted header
 * (encryption context `synapse-backup-id`), so another backup's object and
 * manifest copied over its keys are refused by verify, restore and decrypt
 * before any byte reaches tar or the output. In-memory store, this host's tar.
 */
import type { EngineOptions } from '../src/backup/types';
import { promises as fsp } from 'node:fs';
import { Writable } from 'node:stream';
import { BackupError } from '../src/errors';
import { encrypt, buildTar } from './support/backups';
import { MemoryStore } from './support/memory-store';
import { MEMORY_PASSPHRASE, memoryEngine } from './support/memory-engine';
import { tmpDir } from './support/peers';
import { makeSynapseTree, snapshotTree } from './support/synapse-tree';

const PASSPHRASE = MEMORY_PASSPHRASE;
const engineOn = (store: MemoryStore, dataDir: string, extra: Partial<EngineOptions> = {}) =>
  memoryEngine(store, dataDir, { passphrase: PASSPHRASE, ...extra });

const REFUSED = "backup A's object holds backup B (its encrypted header says so): refused";

async function refusal(promise: Promise<unknown>): Promise<BackupError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(BackupError);
  return error as BackupError;
}

describe("a backup's id is bound into its encrypted header", () => {
  test("B's object and manifest over A's keys: verify, restore and decrypt refuse, naming both", async () => {
    const store = new MemoryStore();
    const a = (await tmpDir('binding-a')).path;
    const b = (await tmpDir('binding-b')).path;
    await makeSynapseTree(a, { mediaFiles: 1 });
    await makeSynapseTree(b, { mediaFiles: 3 });
    await engineOn(store, a).create({ id: 'A' });
    await engineOn(store, b).create({ id: 'B' });
    for (const suffix of ['.tar.enc', '.manifest.json']) {
      store.putObject(`backups/A${suffix}`, store.objects.get(`backups/B${suffix}`)!.data);
    }
    const live = await snapshotTree(a);
    const engine = engineOn(store, a);

    const verified = await refusal(engine.verify('A'));
    expect(verified.code).toBe('wrong-backup');
    expect(verified.message).toBe(REFUSED);

    const restored = await refusal(engine.restore({ id: 'A' }));
    expect(restored.code).toBe('wrong-backup');
    expect(restored.message).toBe(REFUSED);
    expect(await snapshotTree(a)).toEqual(live);
    expect((await fsp.readdir(a)).filter((n) => n.startsWith('.synapse-'))).toEqual([]);

    let written = 0;
    const output = new Writable({
      write: (chunk: Buffer, _enc, done) => {
        written += chunk.length;
        done();
      },
    });
    const decrypted = await refusal(engine.decryptTo('A', output));
    expect(decrypted.message).toBe(REFUSED);
    expect(written).toBe(0);

    // B itself still verifies.
    await expect(engine.verify('B')).resolves.toMatchObject({ backupId: 'B' });
  });

  test('a message without a context (the original Python design) still decrypts under any id', async () => {
    const store = new MemoryStore();
    const tar = await buildTar([{ name: 'homeserver.yaml', content: 'server_name: "x"\n' }]);
    store.putObject('backups/legacy.tar.enc', await encrypt(tar, PASSPHRASE));
    const chunks: Buffer[] = [];
    const output = new Writable({
      write: (chunk: Buffer, _enc, done) => {
        chunks.push(chunk);
        done();
      },
    });
    const engine = engineOn(store, (await tmpDir('binding-legacy')).path);
    await engine.decryptTo('legacy', output, { allowMissingManifest: true });
    expect(Buffer.concat(chunks).equals(tar)).toBe(true);
  });
});
