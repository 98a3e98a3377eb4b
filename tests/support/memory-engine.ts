/**
 * An engine on the in-memory store (memory-store.ts) and this host's tar (the
 * local workload), and a generated Synapse-like data dir for it: what the
 * engine-logic suites share. 5 MiB parts, so a few MiB make a multipart upload.
 */
import { BackupEngine } from '../../src/backup/engine';
import type { EngineOptions } from '../../src/backup/types';
import { parseS3Settings } from '../../src/s3/settings';
import { LocalWorkload } from '../../src/workload/local';
import type { MemoryStore } from './memory-store';
import { tmpDir } from './peers';
import { makeSynapseTree } from './synapse-tree';

export const MEMORY_PASSPHRASE = 'correct horse battery staple';

/** An engine on `store` for `dataDir`; `extra` overrides any option (workload, passphrase...). */
export function memoryEngine(
  store: MemoryStore,
  dataDir: string,
  extra: Partial<EngineOptions> = {},
): BackupEngine {
  return new BackupEngine({
    s3: parseS3Settings({ bucket: store.bucket, region: 'us-east-1' }),
    store,
    workload: new LocalWorkload(),
    dataDir,
    passphrase: MEMORY_PASSPHRASE,
    partSize: 5 * 1024 * 1024,
    ...extra,
  });
}

/** A fresh generated data dir (tests/support/synapse-tree.ts) with 2 media files by default. */
export async function memorySynapseDir(
  prefix: string,
  options: { mediaFiles?: number; bigFileBytes?: number } = {},
): Promise<string> {
  const dir = await tmpDir(prefix);
  await makeSynapseTree(dir.path, { mediaFiles: 2, ...options });
  return dir.path;
}
