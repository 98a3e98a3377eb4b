/**
 * The refusals --force overrides are given together: the foreign-data-dir refusal,
 * whose remedy says "run again with force", once hid the refusal that
 * would have named the paths OUTSIDE the data dir the restore replaces, so a live
 * file outside the target (here a signing key) is overwritten (and, without
 * keep-previous, its previous copy deleted) though the operator never saw it named.
 * The first refusal now names every condition force would override.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { memoryEngine } from './support/memory-engine';
import { MemoryStore } from './support/memory-store';

let root: string;
beforeEach(() => {
  root = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'review-force-')));
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

test('the foreign-data-dir refusal names the outside paths that force would also replace', async () => {
  const data = path.join(root, 'data');
  const etc = path.join(root, 'etc');
  fs.mkdirSync(path.join(data, 'media_store/local_content/ab'), { recursive: true });
  fs.mkdirSync(etc);
  const key = path.join(etc, 'ex.signing.key');
  fs.writeFileSync(key, 'ed25519 a_key BACKED-UP\n');
  fs.writeFileSync(
    path.join(data, 'homeserver.yaml'),
    `server_name: ex.org\nsigning_key_path: ${key}\n`,
  );
  fs.writeFileSync(path.join(data, 'media_store/local_content/ab/m'), 'm');
  const store = new MemoryStore();
  const source = memoryEngine(store, data);
  await source.create({ id: 'ext' });
  source.close();

  fs.writeFileSync(key, 'ed25519 a_key LIVE\n');
  const foreign = path.join(root, 'deploy');
  fs.mkdirSync(foreign);
  fs.writeFileSync(path.join(foreign, 'docker-compose.yml'), 'services: {}\n');
  const engine = memoryEngine(store, foreign);
  try {
    const refusal = await engine.restore({ id: 'ext', services: [] }).catch((e: Error) => e);
    expect(refusal).toMatchObject({ code: 'foreign-data-dir' });
    // What force would also do must be said before the operator is told to force.
    expect((refusal as Error).message).toContain(key);
  } finally {
    engine.close();
  }
  expect(fs.readFileSync(key, 'utf8')).toBe('ed25519 a_key LIVE\n');
});
