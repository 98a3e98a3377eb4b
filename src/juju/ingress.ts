/**
 * The `ingress` relation, requirer side: traefik-k8s's `ingress` interface v2
 * (canonical/traefik-k8s-operator lib/charms/traefik_k8s/v2/ingress.py,
 * LIBPATCH 15), written out here because no TypeScript library exists.
 *
 * What goes into the databags (every value JSON-encoded, as the library's
 * DatabagModel.dump does; keys whose value is the schema's default are left
 * out, as `exclude_defaults=True` does, and removed when set before):
 * - our application databag (leader only), IngressRequirerAppData:
 *   `model` ("my-model"), `name` ("synapse"), `port` (8008), and
 *   `strip-prefix` (true) when asked; `redirect-https` (default false),
 *   `scheme` (default "http") and `healthcheck_params` (default none) are not sent;
 * - our unit databag, IngressRequirerUnitData: `host` (the unit's FQDN, as
 *   Python's socket.getfqdn() gives it) and `ip` (network-get's bind address
 *   for the endpoint), from the unit that serves only;
 * - the provider's application databag, IngressProviderAppData:
 *   `ingress` = {"url": "http://..."} (the URL it routes to us).
 */
import { promises as dns } from 'node:dns';
import { hostname } from 'node:os';
import type { JujuContext } from './context';
import type { HookTools } from './hook-tools';

export const INGRESS_ENDPOINT = 'ingress';

/** What we ask the provider for. */
export interface IngressRequest {
  port: number;
  /** With path routing (`http://host/<model>-<app>`), strip that prefix before it reaches us. */
  stripPrefix: boolean;
}

export type IngressState =
  | { kind: 'none' }
  | { kind: 'waiting'; app: string }
  | { kind: 'ready'; app: string; url: string }
  | { kind: 'invalid'; app: string; reason: string };

/** IngressRequirerAppData as the library dumps it: JSON values, defaults left out ('' removes). */
export function requirerAppData(
  ctx: Pick<JujuContext, 'modelName' | 'appName'>,
  request: IngressRequest,
): Record<string, string> {
  return {
    model: JSON.stringify(ctx.modelName),
    name: JSON.stringify(ctx.appName),
    port: JSON.stringify(request.port),
    'strip-prefix': request.stripPrefix ? 'true' : '',
    'redirect-https': '',
    scheme: '',
    healthcheck_params: '',
  };
}

/** IngressRequirerUnitData: `host` and, when known, `ip` (JSON strings); null clears both. */
export function requirerUnitData(
  unit: { host: string; ip?: string } | null,
): Record<string, string> {
  if (!unit) return { host: '', ip: '' };
  return { host: JSON.stringify(unit.host), ip: unit.ip ? JSON.stringify(unit.ip) : '' };
}

/**
 * The URL in the provider's databag: undefined when it has published none
 * yet; throws Error with the reason when the data does not match the schema.
 */
export function providerUrl(databag: Record<string, string>): string | undefined {
  const raw = databag.ingress;
  if (!raw) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new Error(`its "ingress" value is not JSON: ${raw.slice(0, 80)}`);
  }
  const url = (parsed as { url?: unknown } | null)?.url;
  if (typeof url !== 'string' || !/^https?:\/\/[^/\s]+/.test(url)) {
    throw new Error(`its "ingress" value has no http(s) url: ${raw.slice(0, 80)}`);
  }
  return url;
}

/** The unit's FQDN as Python's socket.getfqdn() finds it (hostname, then its address's name). */
export async function unitFqdn(): Promise<string> {
  const name = hostname();
  try {
    const { address } = await dns.lookup(name);
    const reverse = await dns.lookupService(address, 0);
    if (reverse.hostname.startsWith(`${name}.`)) return reverse.hostname;
  } catch {
    // no resolver entry: the bare hostname, as getfqdn falls back to
  }
  return name;
}

/**
 * Publishes our side of the ingress relation (application data when
 * `leader`; unit data only when `serving`, cleared otherwise, so that the
 * provider never routes to a unit that does not run Synapse) and reads the
 * provider's URL. In `<endpoint>-relation-broken` the relation being removed
 * counts as gone.
 */
export async function syncIngress(
  ctx: JujuContext,
  tools: HookTools,
  request: IngressRequest,
  options: { leader: boolean; serving: boolean },
): Promise<IngressState> {
  const ids = (await tools.relationIds(INGRESS_ENDPOINT)).map((raw) =>
    Number(raw.slice(raw.lastIndexOf(':') + 1)),
  );
  const broken =
    ctx.hookName === `${INGRESS_ENDPOINT}-relation-broken` ? ctx.relationId : undefined;
  const id = ids.find((i) => i !== broken);
  if (id === undefined) return { kind: 'none' };
  if (options.leader) {
    await tools.relationSet(id, requirerAppData(ctx, request), { app: true });
  }
  const ip = options.serving
    ? await tools.bindAddress(INGRESS_ENDPOINT).catch(() => undefined)
    : undefined;
  const unit = options.serving ? { host: await unitFqdn(), ip } : null;
  await tools.relationSet(id, requirerUnitData(unit));
  const app = (await tools.relationRemoteApp(id)) ?? 'the ingress provider';
  try {
    const url = providerUrl(await tools.relationGet(id, app, { app: true }));
    return url ? { kind: 'ready', app, url } : { kind: 'waiting', app };
  } catch (err) {
    return { kind: 'invalid', app, reason: (err as Error).message };
  }
}
