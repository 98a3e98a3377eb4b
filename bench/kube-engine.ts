/**
 * `ours (kubernetes)` in `npm run bench`: the engine with workload-exec=kubernetes, i.e.
 * tar started through the API server's exec (websocket v5 from the engine, SPDY from the
 * API server to the kubelet) and the archive through that same stream, as the charm does
 * it with `workload-exec=kubernetes`. The CLI has no Kubernetes transport, so this is a
 * CLI-shaped driver around the same engine.
 *
 * Usage: BENCH_KUBE_CONFIG=FILE node .bench/kube-engine.js create|restore --id ID --data-dir DIR
 *   FILE: JSON {kubeConfig (kubeconfig YAML), namespace, pod, container}, written by run.ts
 *   from the rig of tests/support/kube.ts. S3 and the passphrase as for the CLI:
 *   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, SYNAPSE_BACKUP_PASSPHRASE,
 *   BENCH_ENDPOINT, BENCH_BUCKET, BENCH_PREFIX.
 * Prints the engine's result as one JSON line; exits 1 with the error on stderr.
 */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { BackupEngine } from '../src/backup/engine';
import { parseS3Settings } from '../src/s3/settings';
import { KubernetesWorkload } from '../src/workload/kubernetes';

interface KubeTarget {
  kubeConfig: string;
  namespace: string;
  pod: string;
  container: string;
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { id: { type: 'string' }, 'data-dir': { type: 'string' } },
  });
  const command = positionals[0];
  const target = JSON.parse(
    fs.readFileSync(process.env.BENCH_KUBE_CONFIG ?? '', 'utf8'),
  ) as KubeTarget;
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromString(target.kubeConfig);
  const engine = new BackupEngine({
    s3: parseS3Settings({
      bucket: process.env.BENCH_BUCKET,
      prefix: process.env.BENCH_PREFIX,
      endpoint: process.env.BENCH_ENDPOINT,
      region: 'us-east-1',
      uriStyle: 'path',
      accessKeyId: process.env.AWS_ACCESS_KEY_ID,
      secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
    }),
    passphrase: process.env.SYNAPSE_BACKUP_PASSPHRASE,
    workload: new KubernetesWorkload({
      kubeConfig,
      namespace: target.namespace,
      pod: target.pod,
      container: target.container,
    }),
    dataDir: values['data-dir'],
    // gen_data.py's homeserver.yaml names /data (the charm's mount): read it under dataDir.
    configRoot: '/data',
  });
  try {
    const result =
      command === 'create'
        ? await engine.create({ id: values.id })
        : await engine.restore({ id: values.id! });
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    engine.close();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`kube-engine: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
