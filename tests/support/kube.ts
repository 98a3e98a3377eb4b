/**
 * The Kubernetes exec rig: a real etcd and kube-apiserver, and the test kubelet
 * (tests/support/kubelet, the kubelet's own streaming server running commands on
 * this host), with a Node pointing the API server at that kubelet and a Pod bound
 * to the Node. `kubectl exec` into that pod runs the command here, through the
 * API server's real exec path (websocket v5 translated to SPDY towards the kubelet).
 *
 * Build the binaries with `bash scripts/peers/install.sh` (kube.sh); gate tests with
 * `describeWithPeers(['kube'])`. Whatever is started here is stopped by the peers sweep.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as https from 'node:https';
import * as path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import {
  type Launched,
  freePort,
  httpStatus,
  killHard,
  kubePeerPaths,
  launch,
  makeTestCertificates,
  tmpDir,
  track,
  waitUntil,
} from './peers';

export interface KubeRig {
  /** https://127.0.0.1:port */
  server: string;
  /** PEM of the CA that signed the API server's certificate. */
  caCert: string;
  /** A system:masters token. */
  adminToken: string;
  namespace: string;
  /** `<app>-<unit>`, bound to the rig's node; its containers are listed in `containers`. */
  pod: string;
  appName: string;
  unitNumber: number;
  containers: string[];
  /** A KubeConfig for the API server with a bearer token (admin's by default). */
  kubeConfig(token?: string): KubeConfig;
  /** JSON request to the API server as admin; rejects on a non-2xx answer. */
  api<T = unknown>(method: string, apiPath: string, body?: unknown): Promise<T>;
  /**
   * A ServiceAccount bound to a Role with these `pods/exec` verbs (plus pods get/list,
   * as Juju's default role has), and a token for it from the TokenRequest API.
   */
  serviceAccountToken(name: string, execVerbs: string[]): Promise<string>;
  /** Writes `<root>/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}`. */
  writeServiceAccountFiles(root: string, token: string): Promise<void>;
  /** kill -9 the kubelet (every exec through it drops). */
  killKubelet(): Promise<void>;
  /** Starts the kubelet again on the same port. */
  startKubelet(): Promise<void>;
  /** The kubelet's log so far (one line per exec, with its pid and exit). */
  kubeletLog(): Promise<string>;
  /** Stops everything and removes its files. Idempotent. */
  stop(): Promise<void>;
}

export interface KubeRigOptions {
  appName?: string;
  unitNumber?: number;
  namespace?: string;
  containers?: string[];
}

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { stdio: 'pipe' });
}

export async function startKubeRig(options: KubeRigOptions = {}): Promise<KubeRig> {
  const bins = kubePeerPaths();
  const appName = options.appName ?? 'synapse';
  const unitNumber = options.unitNumber ?? 0;
  const namespace = options.namespace ?? 'synapse-model';
  const containers = options.containers ?? ['charm', 'synapse'];
  const pod = `${appName}-${unitNumber}`;
  const nodeName = 'test-node';

  const root = await tmpDir('kube-rig');
  const file = (name: string) => path.join(root.path, name);
  const launched: Launched[] = [];
  let kubelet: Launched | undefined;
  const stop = async () => {
    untrack();
    if (kubelet) await killHard(kubelet);
    for (const p of launched.reverse()) await killHard(p);
    await root.cleanup();
  };
  const untrack = track(stop);

  try {
    // ---- certificates and keys
    const certs = makeTestCertificates(root.path); // ca.crt, server.crt/key for 127.0.0.1
    openssl(
      'genpkey',
      '-algorithm',
      'RSA',
      '-pkeyopt',
      'rsa_keygen_bits:2048',
      '-out',
      file('sa.key'),
    );
    openssl('pkey', '-in', file('sa.key'), '-pubout', '-out', file('sa.pub'));
    const adminToken = randomBytes(24).toString('hex');
    await fsp.writeFile(file('tokens.csv'), `${adminToken},admin,admin,system:masters\n`);

    // ---- etcd
    const [etcdPort, etcdPeerPort, apiPort, kubeletPort] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    const etcdUrl = `http://127.0.0.1:${etcdPort}`;
    const etcdPeerUrl = `http://127.0.0.1:${etcdPeerPort}`;
    const etcdLog = file('etcd.log');
    const etcd = launch(
      bins.etcd,
      [
        '--name=rig',
        `--data-dir=${file('etcd-data')}`,
        `--listen-client-urls=${etcdUrl}`,
        `--advertise-client-urls=${etcdUrl}`,
        `--listen-peer-urls=${etcdPeerUrl}`,
        `--initial-advertise-peer-urls=${etcdPeerUrl}`,
        `--initial-cluster=rig=${etcdPeerUrl}`,
        '--unsafe-no-fsync',
        '--log-level=warn',
      ],
      process.env,
      etcdLog,
      root.path,
    );
    launched.push(etcd);
    await waitUntil('etcd', etcd, etcdLog, async () => {
      return (await httpStatus({ host: '127.0.0.1', port: etcdPort, path: '/health' })) === 200;
    });

    // ---- kube-apiserver
    const apiLog = file('kube-apiserver.log');
    const apiserver = launch(
      bins.apiserver,
      [
        `--etcd-servers=${etcdUrl}`,
        '--advertise-address=127.0.0.1',
        '--bind-address=127.0.0.1',
        `--secure-port=${apiPort}`,
        `--cert-dir=${file('apiserver-certs')}`,
        `--tls-cert-file=${file('server.crt')}`,
        `--tls-private-key-file=${file('server.key')}`,
        `--token-auth-file=${file('tokens.csv')}`,
        '--authorization-mode=RBAC',
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        `--service-account-key-file=${file('sa.pub')}`,
        `--service-account-signing-key-file=${file('sa.key')}`,
        '--service-cluster-ip-range=10.0.0.0/24',
        '--kubelet-preferred-address-types=InternalIP',
        // 127.0.0.1 cannot back the `kubernetes` Service's endpoints; nothing here needs them.
        '--endpoint-reconciler-type=none',
        '--enable-priority-and-fairness=false',
        '--profiling=false',
        '--v=1',
      ],
      process.env,
      apiLog,
      root.path,
    );
    launched.push(apiserver);
    const agent = new https.Agent({ ca: certs.caCert, keepAlive: false });
    const api = <T>(method: string, apiPath: string, body?: unknown): Promise<T> =>
      new Promise<T>((resolve, reject) => {
        const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
        const contentType =
          method === 'PATCH' ? 'application/merge-patch+json' : 'application/json';
        const req = https.request(
          {
            host: '127.0.0.1',
            port: apiPort,
            method,
            path: apiPath,
            agent,
            headers: {
              Authorization: `Bearer ${adminToken}`,
              Accept: 'application/json',
              ...(payload ? { 'Content-Type': contentType, 'Content-Length': payload.length } : {}),
            },
            timeout: 30_000,
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => {
              const text = Buffer.concat(chunks).toString('utf8');
              const code = res.statusCode ?? 0;
              if (code < 200 || code >= 300) {
                reject(new Error(`${method} ${apiPath}: ${code} ${text}`));
                return;
              }
              resolve((text ? JSON.parse(text) : undefined) as T);
            });
          },
        );
        req.on('timeout', () => req.destroy(new Error(`${method} ${apiPath}: timeout`)));
        req.on('error', reject);
        req.end(payload);
      });
    await waitUntil(
      'kube-apiserver',
      apiserver,
      apiLog,
      async () => {
        const status = await httpStatus({
          host: '127.0.0.1',
          port: apiPort,
          path: '/readyz',
          ca: certs.caCert,
          headers: { Authorization: `Bearer ${adminToken}` },
        });
        return status === 200;
      },
      120_000,
    );

    // ---- the kubelet
    const kubeletLog = file('test-kubelet.log');
    const startKubelet = async () => {
      const p = launch(
        bins.kubelet,
        [
          `--address=127.0.0.1:${kubeletPort}`,
          `--tls-cert-file=${file('server.crt')}`,
          `--tls-private-key-file=${file('server.key')}`,
        ],
        process.env,
        kubeletLog,
        root.path,
      );
      kubelet = p;
      await waitUntil('test-kubelet', p, kubeletLog, async () => {
        const probe = { host: '127.0.0.1', port: kubeletPort, path: '/healthz', ca: certs.caCert };
        return (await httpStatus(probe)) === 200;
      });
    };
    await startKubelet();

    // ---- objects: what a controller-manager, scheduler and kubelet would have made
    await api('POST', '/api/v1/namespaces', { metadata: { name: namespace } });
    await api('POST', `/api/v1/namespaces/${namespace}/serviceaccounts`, {
      metadata: { name: 'default' },
    });
    await api('POST', '/api/v1/nodes', { metadata: { name: nodeName } });
    await api('PATCH', `/api/v1/nodes/${nodeName}/status`, {
      status: {
        addresses: [{ type: 'InternalIP', address: '127.0.0.1' }],
        daemonEndpoints: { kubeletEndpoint: { Port: kubeletPort } },
        conditions: [
          {
            type: 'Ready',
            status: 'True',
            reason: 'KubeletReady',
            message: 'the test kubelet is serving',
            lastHeartbeatTime: new Date().toISOString(),
            lastTransitionTime: new Date().toISOString(),
          },
        ],
      },
    });
    await api('POST', `/api/v1/namespaces/${namespace}/pods`, {
      metadata: { name: pod, labels: { app: appName } },
      spec: {
        nodeName,
        automountServiceAccountToken: false,
        containers: containers.map((name) => ({ name, image: `${name}:test` })),
      },
    });

    const server = `https://127.0.0.1:${apiPort}`;
    const kubeConfig = (token = adminToken) => {
      const kc = new KubeConfig();
      kc.loadFromOptions({
        clusters: [
          {
            name: 'rig',
            server,
            caData: Buffer.from(certs.caCert).toString('base64'),
            skipTLSVerify: false,
          },
        ],
        users: [{ name: 'rig-user', token }],
        contexts: [{ name: 'rig', cluster: 'rig', user: 'rig-user', namespace }],
        currentContext: 'rig',
      });
      return kc;
    };

    const serviceAccountToken = async (name: string, execVerbs: string[]) => {
      const ns = `/api/v1/namespaces/${namespace}`;
      const rbac = `/apis/rbac.authorization.k8s.io/v1/namespaces/${namespace}`;
      await api('POST', `${ns}/serviceaccounts`, { metadata: { name } });
      await api('POST', `${rbac}/roles`, {
        metadata: { name },
        rules: [
          { apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'patch'] },
          ...(execVerbs.length > 0
            ? [{ apiGroups: [''], resources: ['pods/exec'], verbs: execVerbs }]
            : []),
        ],
      });
      await api('POST', `${rbac}/rolebindings`, {
        metadata: { name },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name },
        subjects: [{ kind: 'ServiceAccount', name, namespace }],
      });
      const request = await api<{ status: { token: string } }>(
        'POST',
        `${ns}/serviceaccounts/${name}/token`,
        { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: {} },
      );
      return request.status.token;
    };

    return {
      server,
      caCert: certs.caCert,
      adminToken,
      namespace,
      pod,
      appName,
      unitNumber,
      containers,
      kubeConfig,
      api,
      serviceAccountToken,
      async writeServiceAccountFiles(dir, token) {
        const sa = path.join(dir, 'var/run/secrets/kubernetes.io/serviceaccount');
        await fsp.mkdir(sa, { recursive: true });
        await fsp.writeFile(path.join(sa, 'token'), token);
        await fsp.writeFile(path.join(sa, 'ca.crt'), certs.caCert);
        await fsp.writeFile(path.join(sa, 'namespace'), namespace);
      },
      async killKubelet() {
        if (kubelet) await killHard(kubelet);
      },
      startKubelet,
      kubeletLog: () => fsp.readFile(kubeletLog, 'utf8').catch(() => ''),
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
