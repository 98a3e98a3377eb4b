import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import * as tarStream from 'tar-stream';
import { createEncryptStream, encryptionParameters } from '../../src/crypto/esdk';
import { MANIFEST_FORMAT, MANIFEST_VERSION, type Manifest } from '../../src/backup/manifest';

export async function encrypt(
  plaintext: Buffer,
  passphrase: string,
  frameLength = 4096,
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await pipeline(
    Readable.from([plaintext]),
    createEncryptStream(passphrase, frameLength),
    async (source: AsyncIterable<Buffer>) => {
      for await (const chunk of source) chunks.push(chunk);
    },
  );
  return Buffer.concat(chunks);
}

export interface RawEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'fifo';
  linkname?: string;
  content?: string;
}

/** A tar built entry by entry with tar-stream: for archives GNU tar would never write. */
export async function buildTar(entries: RawEntry[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const chunk of pack) chunks.push(chunk as Buffer);
  })();
  for (const e of entries) {
    const content = e.content ?? '';
    const header = {
      name: e.name,
      type: e.type ?? 'file',
      linkname: e.linkname,
      size: (e.type ?? 'file') === 'file' ? Buffer.byteLength(content) : 0,
      mode: e.type === 'directory' ? 0o755 : 0o644,
    };
    if (header.type === 'file') pack.entry(header, content);
    else
      pack.entry(header, (err) => {
        if (err) throw err;
      });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

/**
 * Stores `ciphertext` as backup `id` with a manifest whose counts match the
 * plaintext: what the engine would have written, for archives it never would.
 */
export async function putBackup(
  client: S3Client,
  bucket: string,
  prefix: string,
  id: string,
  plaintext: Buffer,
  ciphertext: Buffer,
  options: { files: number; entries: number; withManifest?: boolean; serverName?: string },
): Promise<void> {
  const key = (name: string) => (prefix ? `${prefix}/${name}` : name);
  await client.send(
    new PutObjectCommand({ Bucket: bucket, Key: key(`${id}.tar.enc`), Body: ciphertext }),
  );
  if (options.withManifest === false) return;
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    id,
    object: key(`${id}.tar.enc`),
    startedAt: new Date().toISOString(),
    finishedAt: new Date().toISOString(),
    plaintextBytes: plaintext.length,
    ciphertextBytes: ciphertext.length,
    files: options.files,
    entries: options.entries,
    sha256: createHash('sha256').update(plaintext).digest('hex'),
    encryption: encryptionParameters(4096),
    dataDir: '/data',
    engine: { name: 'test', version: '0' },
    ...(options.serverName ? { serverName: options.serverName } : {}),
  };
  await client.send(
    new PutObjectCommand({
      Bucket: bucket,
      Key: key(`${id}.manifest.json`),
      Body: JSON.stringify(manifest),
    }),
  );
}
