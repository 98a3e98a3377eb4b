// Bundles the charm entry point and the CLI into single files under build/.
import { build } from 'esbuild';

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
};

await build({ ...common, entryPoints: ['src/cli/main.ts'], outfile: 'build/synapse-backup.js' });
if (process.argv.includes('--charm') || (await exists('src/charm/main.ts'))) {
  await build({ ...common, entryPoints: ['src/charm/main.ts'], outfile: 'build/charm.js' });
}

async function exists(path) {
  const { access } = await import('node:fs/promises');
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
