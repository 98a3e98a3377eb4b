// Jest transform for the ES-module-only packages that @kubernetes/client-node 1.x brings
// (it, openid-client, oauth4webapi, jose): jest on Node 20 cannot require() ES modules, so
// esbuild (already a dev dependency, and what bundles the charm) rewrites them to CommonJS.
const { transformSync } = require('esbuild');

module.exports = {
  process(sourceText, sourcePath) {
    const { code, map } = transformSync(sourceText, {
      format: 'cjs',
      loader: 'js',
      target: 'node20',
      platform: 'node',
      sourcefile: sourcePath,
      sourcemap: 'external',
    });
    return { code, map };
  },
};
