import { BackupError } from '../errors';
import type { Workload } from '../workload/workload';
import { type HomeserverConfig, readHomeserverConfig, readSmallFileIfExists } from './homeserver';
import type { Manifest } from './manifest';
import type { RestoreRequest } from './types';

/** Which Synapse a data dir belongs to, as recorded in manifests and checked before restores. */
export interface ServerIdentity {
  serverName?: string;
  /** e.g. `ed25519:a_AbCd` */
  signingKeyId?: string;
}

/**
 * Reads server_name from homeserver.yaml and the signing key's id; missing pieces stay
 * undefined, and so does everything when homeserver.yaml is not YAML. `configRoot`:
 * see homeserver.ts resolveConfigPath.
 */
export async function readServerIdentity(
  workload: Workload,
  dataDir: string,
  configRoot?: string,
): Promise<ServerIdentity> {
  const config = await readHomeserverConfig(workload, dataDir, configRoot).catch((err: unknown) => {
    if (err instanceof BackupError && err.code === 'invalid-config') return undefined;
    throw err;
  });
  return serverIdentityOf(workload, config);
}

/**
 * The identity of an already read homeserver.yaml (readHomeserverConfig; undefined
 * when there is none: {}): its server_name, and the id of the signing key it names,
 * read through `workload` (undefined when that file is missing or not a key).
 */
export async function serverIdentityOf(
  workload: Workload,
  config: HomeserverConfig | undefined,
): Promise<ServerIdentity> {
  if (!config) return {};
  const { serverName, signingKeyPath: keyPath } = config.paths;
  const keyText = keyPath ? await readSmallFileIfExists(workload, keyPath) : undefined;
  return { serverName, signingKeyId: keyText ? parseSigningKeyId(keyText) : undefined };
}

/** A Synapse signing key file line is `<algorithm> <version> <base64 seed>`. */
export function parseSigningKeyId(text: string): string | undefined {
  const [algorithm, version] = text.trim().split(/\s+/);
  return algorithm && version ? `${algorithm}:${version}` : undefined;
}

/**
 * Refuses a backup of another server name than the live one (server_name of
 * homeserver.yaml as `configRead` read it; none, or not YAML: the request's
 * expectedServerName); and a backup whose manifest names no
 * server (made where there was no homeserver.yaml: media alone, say) over a
 * data dir whose homeserver.yaml names one, which would replace that server's
 * media with files of unknown origin.
 */
export async function refuseOtherServer(
  id: string,
  manifest: Manifest | undefined,
  request: Pick<RestoreRequest, 'expectedServerName'>,
  configRead: Promise<HomeserverConfig | undefined>,
): Promise<void> {
  const backupServer = manifest?.serverName;
  if (!backupServer && !manifest) return;
  const config = await configRead.catch((err: unknown) => {
    if (err instanceof BackupError && err.code === 'invalid-config') return undefined;
    throw err;
  });
  if (!backupServer) {
    const live = config?.paths.serverName;
    if (!live) return;
    throw new BackupError(
      'wrong-server',
      `backup ${id} names no server (it was made where there was no homeserver.yaml) but this Synapse is "${live}": restoring it would replace this server's files with ones of unknown origin`,
      { remedy: { kind: 'run-again', option: 'force', when: 'if that is what you want' } },
    );
  }
  const current = config?.paths.serverName ?? request.expectedServerName;
  if (current && current !== backupServer) {
    throw new BackupError(
      'wrong-server',
      `backup ${id} is of server "${backupServer}" but this Synapse is "${current}": restoring it would replace this server's identity`,
      { remedy: { kind: 'run-again', option: 'force', when: 'if that is what you want' } },
    );
  }
}
