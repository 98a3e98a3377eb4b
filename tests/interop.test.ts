import { minioEngine } from './support/engines';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Writable } from 'node:stream';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { type MinioPeer, describeWithPeers, pythonEsdk, startMinio, tmpDir } from './support/peers';
import {
  inspectSqliteDb,
  makeSynapseTree,
  snapshotTree,
  withoutSkipped,
} from './support/synapse-tree';

/** The seed's format, both ways, against the Python aws-encryption-sdk from PyPI. */
describeWithPeers(['minio', 'esdk'])('interoperability with the Python AWS Encryption SDK', () => {
  let minio: MinioPeer;
  beforeAll(async () => {
    minio = await startMinio();
  });
  afterAll(async () => {
    await minio?.stop();
  });

  const engineFor = (passphrase: string, dataDir: string, frameLength?: number) =>
    minioEngine(minio, 'interop', { passphrase, dataDir, frameLength });

  const getObject = async (key: string): Promise<Buffer> => {
    const out = await minio.client.send(new GetObjectCommand({ Bucket: minio.bucket, Key: key }));
    return Buffer.from(await out.Body!.transformToByteArray());
  };

  test.each([
    ['an ASCII passphrase and 1 MiB frames', 'plain ascii passphrase', undefined],
    ['a non-ASCII passphrase and 4 KiB frames', 'pässwörd-日本語-🔐', 4096],
  ])(
    'an object this project wrote decrypts with Python (%s)',
    async (_label, passphrase, frameLength) => {
      const src = await tmpDir('interop-src');
      await makeSynapseTree(src.path, { bigFileBytes: 3 * 1024 * 1024 + 17 });
      const engine = engineFor(passphrase, src.path, frameLength);
      const id = `ours-${frameLength ?? 'default'}`;
      const created = await engine.create({ id });
      engine.close();

      const ciphertext = await getObject(`interop/${id}.tar.enc`);
      // ESDK message format version 2, suite 0x0478 (unsigned, key-committing).
      expect(ciphertext.subarray(0, 3)).toEqual(Buffer.from([0x02, 0x04, 0x78]));
      const py = await pythonEsdk().run('decrypt', passphrase, ciphertext);
      expect(py.stderr).toBe('');
      expect(py.code).toBe(0);
      expect(py.stdout.length).toBe(created.plaintextBytes);
      expect(createHash('sha256').update(py.stdout).digest('hex')).toBe(created.sha256);
      const listing = spawnSync('tar', ['-t', '-f', '-'], { input: py.stdout });
      expect(listing.status).toBe(0);
      expect(listing.stdout.toString()).toContain('homeserver.yaml');

      // The backup id is in the header's encryption context, where Python reads it.
      const bound = await pythonEsdk().run('decrypt', passphrase, ciphertext, {
        context: { 'synapse-backup-id': id },
      });
      expect(bound.code).toBe(0);
      expect(bound.stdout.equals(py.stdout)).toBe(true);
      const other = await pythonEsdk().run('decrypt', passphrase, ciphertext, {
        context: { 'synapse-backup-id': 'another' },
      });
      expect(other.code).toBe(1);
      expect(other.stdout.length).toBe(0);

      const wrong = await pythonEsdk().run('decrypt', `${passphrase}x`, ciphertext);
      expect(wrong.code).not.toBe(0);
      expect(wrong.stdout.length).toBe(0);
    },
  );

  test("a tar encrypted by the seed's Python code restores with this project", async () => {
    const passphrase = 'clé secrète ünïcødé';
    const src = await tmpDir('interop-src');
    const dst = await tmpDir('interop-dst');
    await makeSynapseTree(src.path);
    // The seed tars with Python's tarfile and encrypts with 4 KiB frames (the SDK default).
    const tar = spawnSync(
      'python3',
      [
        '-c',
        'import sys, tarfile, os\n' +
          'os.chdir(sys.argv[1])\n' +
          'with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as t:\n' +
          '    for name in ["homeserver.yaml", "example.org.signing.key", "homeserver.db", "media_store/local_content"]:\n' +
          '        t.add(name)\n',
        src.path,
      ],
      { maxBuffer: 64 * 1024 * 1024 },
    );
    expect(tar.status).toBe(0);
    const py = await pythonEsdk().run('encrypt', passphrase, tar.stdout);
    expect(py.code).toBe(0);
    await minio.client.send(
      new PutObjectCommand({
        Bucket: minio.bucket,
        Key: 'interop/seed-backup.tar.enc',
        Body: py.stdout,
      }),
    );

    const engine = engineFor(passphrase, dst.path);
    await expect(engine.restore({ id: 'seed-backup' })).rejects.toThrow('it has no manifest');
    const restored = await engine.restore({ id: 'seed-backup', allowMissingManifest: true });
    engine.close();
    const expected = withoutSkipped(await snapshotTree(src.path));
    for (const key of expected.keys()) {
      if (
        !/^(homeserver\.yaml|example\.org\.signing\.key|homeserver\.db|media_store\/local_content)/.test(
          key,
        )
      ) {
        expected.delete(key);
      }
    }
    expected.delete('media_store'); // tarfile did not add the parent directory itself
    const actual = await snapshotTree(dst.path);
    actual.delete('media_store');
    // The restore removes one-time keys from the database; the rest must match byte for byte.
    expected.delete('homeserver.db');
    expect(inspectSqliteDb(`${dst.path}/homeserver.db`)).toMatchObject({
      oneTimeKeys: 0,
      integrity: 'ok',
    });
    actual.delete('homeserver.db');
    expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [key, entry] of expected) expect([key, actual.get(key)]).toEqual([key, entry]);
    expect(restored.files).toBe([...expected.values()].filter((e) => e.type === 'file').length + 1);
  });
  test('a message Python wrote with the backup id in its context: decrypts under that id only', async () => {
    const passphrase = 'python bound passphrase';
    const plaintext = Buffer.from('not even a tar: decrypt does not look');
    const py = await pythonEsdk().run('encrypt', passphrase, plaintext, {
      context: { 'synapse-backup-id': 'py-bound' },
    });
    expect(py.code).toBe(0);
    for (const key of ['interop/py-bound.tar.enc', 'interop/py-moved.tar.enc']) {
      await minio.client.send(
        new PutObjectCommand({ Bucket: minio.bucket, Key: key, Body: py.stdout }),
      );
    }
    const engine = engineFor(passphrase, (await tmpDir('interop-bound')).path);
    const chunks: Buffer[] = [];
    const sink = () =>
      new Writable({
        write: (chunk: Buffer, _enc, done) => {
          chunks.push(chunk);
          done();
        },
      });
    await engine.decryptTo('py-bound', sink(), { allowMissingManifest: true });
    expect(Buffer.concat(chunks).equals(plaintext)).toBe(true);
    chunks.length = 0;
    await expect(
      engine.decryptTo('py-moved', sink(), { allowMissingManifest: true }),
    ).rejects.toThrow(
      "backup py-moved's object holds backup py-bound (its encrypted header says so): refused",
    );
    expect(chunks).toEqual([]);
    engine.close();
  });
});
