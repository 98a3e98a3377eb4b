import { BackupError } from '../errors';
import type { Workload } from '../workload/workload';
import { type HomeserverConfig, readHomeserverConfig, readSmallFileIfExists } from './homeserver';

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
