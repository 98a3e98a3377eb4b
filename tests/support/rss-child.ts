/**
 * A charm-like process for memory measurements: runs one BackupEngine.create over
 * the Kubernetes or the Pebble transport and prints, as one JSON line on stdout, the
 * result and the process's peak resident set (VmHWM). Bundled with esbuild and run
 * with plain `node` by tests (see runRssChild), so that jest's own memory is not counted.
 *
 * Configuration: the RSS_CHILD_CONFIG environment variable, JSON of ChildConfig.
 */
import * as fs from 'node:fs';
import { KubeConfig } from '@kubernetes/client-node';
import { BackupEngine } from '../../src/backup/engine';
import { parseS3Settings } from '../../src/s3/settings';
import { KubernetesWorkload } from '../../src/workload/kubernetes';
import { PebbleWorkload } from '../../src/workload/pebble';
import type { Workload } from '../../src/workload/workload';

export interface ChildConfig {
  transport: 'kubernetes' | 'pebble';
  kube?: {
    server: string;
    caCert: string;
    token: string;
    namespace: string;
    pod: string;
    container: string;
  };
  pebbleSocket?: string;
  s3: {
    endpoint: string;
    bucket: string;
    prefix: string;
    accessKeyId: string;
    secretAccessKey: string;
  };
  dataDir: string;
  id: string;
  passphrase: string;
}

export interface ChildReport {
  /** Peak resident set of the whole process (kernel's high-water mark), bytes. */
  peakRssBytes: number;
  /** Largest rss seen by sampling every 100 ms (a cross-check of the above), bytes. */
  sampledPeakRssBytes: number;
  plaintextBytes: number;
  size: number;
  durationSeconds: number;
}

function vmHwmBytes(): number {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const kib = /^VmHWM:\s+(\d+)\s+kB$/m.exec(status)?.[1];
  return kib ? Number(kib) * 1024 : process.memoryUsage().rss;
}

function workloadFor(config: ChildConfig): Workload {
  if (config.transport === 'pebble') {
    return new PebbleWorkload({ socketPath: config.pebbleSocket! });
  }
  const k = config.kube!;
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [
      {
        name: 'rig',
        server: k.server,
        caData: Buffer.from(k.caCert).toString('base64'),
        skipTLSVerify: false,
      },
    ],
    users: [{ name: 'rig', token: k.token }],
    contexts: [{ name: 'rig', cluster: 'rig', user: 'rig' }],
    currentContext: 'rig',
  });
  return new KubernetesWorkload({
    kubeConfig,
    namespace: k.namespace,
    pod: k.pod,
    container: k.container,
  });
}

async function main(): Promise<void> {
  const config = JSON.parse(process.env.RSS_CHILD_CONFIG ?? '') as ChildConfig;
  let sampled = process.memoryUsage().rss;
  const timer = setInterval(() => {
    sampled = Math.max(sampled, process.memoryUsage().rss);
  }, 100);
  const engine = new BackupEngine({
    s3: parseS3Settings({ ...config.s3, uriStyle: 'path' }),
    passphrase: config.passphrase,
    workload: workloadFor(config),
    dataDir: config.dataDir,
  });
  try {
    const result = await engine.create({ id: config.id });
    clearInterval(timer);
    const report: ChildReport = {
      peakRssBytes: vmHwmBytes(),
      sampledPeakRssBytes: Math.max(sampled, process.memoryUsage().rss),
      plaintextBytes: result.plaintextBytes,
      size: result.size,
      durationSeconds: result.durationSeconds,
    };
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } finally {
    engine.close();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`rss-child: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
