/**
 * Is Synapse answering? The charm asks Synapse itself, over HTTP, rather than
 * trusting that its process runs: a Synapse that is up but not serving (a
 * database migration, a wedged reactor) is not active.
 *
 * Sources: Synapse's health resource (synapse/rest/health.py: GET /health
 * answers 200 "OK" once the listener serves) and the federation version API
 * (Matrix spec, Server-Server API "GET /_matrix/federation/v1/version":
 * `{"server": {"name": "Synapse", "version": "1.163.2"}}`), which needs no
 * token, unlike /_synapse/admin/v1/server_version.
 */

export type Health = { ok: true } | { ok: false; reason: string };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One GET with a timeout; throws with a short reason (`connection refused`, `HTTP 503`). */
async function get(url: string, timeoutMs: number): Promise<string> {
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    if (cause?.code === 'ECONNREFUSED') throw new Error('connection refused');
    if ((err as Error).name === 'TimeoutError') {
      throw new Error(`no answer within ${timeoutMs / 1000} s`);
    }
    throw new Error(cause?.code ?? cause?.message ?? (err as Error).message);
  }
  const body = await response.text();
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return body;
}

/** Probes `<baseUrl>/health` once (3 s timeout). */
export async function probeHealth(baseUrl: string, timeoutMs = 3000): Promise<Health> {
  try {
    await get(`${baseUrl}/health`, timeoutMs);
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: `${baseUrl}/health: ${(err as Error).message}` };
  }
}

/**
 * Probes /health until it answers or `waitMs` (milliseconds) have passed,
 * every second; with waitMs 0, probes once. Returns the last result.
 */
export async function waitForHealth(baseUrl: string, waitMs: number): Promise<Health> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const health = await probeHealth(baseUrl);
    if (health.ok || Date.now() + 1000 > deadline) return health;
    await sleep(1000);
  }
}

/**
 * Synapse's version from the federation version API, e.g. `1.163.2`;
 * undefined when it does not answer or the answer has no version.
 */
export async function synapseVersion(baseUrl: string): Promise<string | undefined> {
  try {
    const body = JSON.parse(await get(`${baseUrl}/_matrix/federation/v1/version`, 3000)) as {
      server?: { version?: unknown };
    };
    const version = body.server?.version;
    return typeof version === 'string' && version ? version : undefined;
  } catch {
    return undefined;
  }
}
