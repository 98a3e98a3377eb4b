import { parse } from 'yaml';
import { fileExists, runCommand } from '../workload/command';
import type { Workload } from '../workload/workload';
import { homeserverPaths } from './homeserver';
import { readSmallFileCommand } from './scripts';

/** Which Synapse a data dir belongs to, as recorded in manifests and checked before restores. */
export interface ServerIdentity {
  serverName?: string;
  /** e.g. `ed25519:a_AbCd` */
  signingKeyId?: string;
}

async function readIfExists(workload: Workload, path: string): Promise<string | undefined> {
  if (!(await fileExists(workload, path))) return undefined;
  return runCommand(workload, readSmallFileCommand(path), `reading ${path}`);
}

/**
 * Reads server_name from homeserver.yaml and the signing key's id; missing pieces stay
 * undefined. `configRoot`: see homeserver.ts resolveConfigPath.
 */
export async function readServerIdentity(
  workload: Workload,
  dataDir: string,
  configRoot?: string,
): Promise<ServerIdentity> {
  const configText = await readIfExists(workload, `${dataDir}/homeserver.yaml`);
  if (configText === undefined) return {};
  let config: Record<string, unknown> = {};
  try {
    const parsed: unknown = parse(configText);
    if (parsed && typeof parsed === 'object') config = parsed as Record<string, unknown>;
  } catch {
    return {};
  }
  const { serverName, signingKeyPath: keyPath } = homeserverPaths(config, dataDir, configRoot);
  const keyText = keyPath ? await readIfExists(workload, keyPath) : undefined;
  return { serverName, signingKeyId: keyText ? parseSigningKeyId(keyText) : undefined };
}

/** A Synapse signing key file line is `<algorithm> <version> <base64 seed>`. */
export function parseSigningKeyId(text: string): string | undefined {
  const [algorithm, version] = text.trim().split(/\s+/);
  return algorithm && version ? `${algorithm}:${version}` : undefined;
}
