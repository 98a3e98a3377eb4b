/**
 * The few calls of Synapse's admin API the user actions need, over HTTP to
 * the charm's Synapse URL (overrides.synapseUrl).
 *
 * Sources (element-hq/synapse, synapse/rest/admin/users.py and the admin API
 * docs, docs/admin_api/register_api.md and user_admin_api.md):
 * - GET /_synapse/admin/v1/register gives a nonce; POST it back with
 *   {nonce, username, password, admin, mac}, mac = hex HMAC-SHA1(shared
 *   secret, nonce \0 username \0 password \0 "admin"|"notadmin"); the answer
 *   has user_id and access_token; M_USER_IN_USE when the name is taken.
 * - POST /_matrix/client/v3/login {type: m.login.password} gives a token.
 * - GET /_synapse/admin/v2/users/<user_id> (404 when unknown) and
 *   PUT /_synapse/admin/v2/users/<user_id> {admin: true}, with an admin token.
 *
 * Errors are SynapseApiError with Synapse's errcode and error text; no
 * password, secret or token is ever part of a message.
 */
import { createHmac } from 'node:crypto';

export class SynapseApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly errcode?: string,
  ) {
    super(message);
    this.name = 'SynapseApiError';
  }
}

async function call<T>(
  baseUrl: string,
  method: string,
  path: string,
  options: { json?: unknown; token?: string; what: string },
): Promise<T> {
  const headers: Record<string, string> = {};
  if (options.json !== undefined) headers['content-type'] = 'application/json';
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  let response: Response;
  try {
    response = await fetch(`${baseUrl}${path}`, {
      method,
      headers,
      body: options.json === undefined ? undefined : JSON.stringify(options.json),
      signal: AbortSignal.timeout(30_000),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    throw new SynapseApiError(
      `${options.what}: Synapse at ${baseUrl} did not answer (${cause})`,
      0,
    );
  }
  const text = await response.text();
  let body: { errcode?: string; error?: string } & Record<string, unknown> = {};
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    body = {};
  }
  if (!response.ok) {
    const detail = body.error ?? `HTTP ${response.status}`;
    throw new SynapseApiError(
      `${options.what}: ${body.errcode ? `${body.errcode}: ` : ''}${detail}`,
      response.status,
      body.errcode,
    );
  }
  return body as T;
}

/** Registers `username` with the shared secret. Returns its user id and an access token. */
export async function registerWithSharedSecret(
  baseUrl: string,
  sharedSecret: string,
  user: { username: string; password: string; admin: boolean },
): Promise<{ userId: string; accessToken: string }> {
  const what = `registering "${user.username}"`;
  const { nonce } = await call<{ nonce: string }>(baseUrl, 'GET', '/_synapse/admin/v1/register', {
    what,
  });
  const mac = createHmac('sha1', sharedSecret)
    .update([nonce, user.username, user.password, user.admin ? 'admin' : 'notadmin'].join('\0'))
    .digest('hex');
  const body = await call<{ user_id: string; access_token: string }>(
    baseUrl,
    'POST',
    '/_synapse/admin/v1/register',
    { json: { nonce, ...user, mac }, what },
  );
  return { userId: body.user_id, accessToken: body.access_token };
}

/** Logs in with a password; returns the access token. */
export async function login(baseUrl: string, username: string, password: string): Promise<string> {
  const body = await call<{ access_token: string }>(baseUrl, 'POST', '/_matrix/client/v3/login', {
    json: { type: 'm.login.password', identifier: { type: 'm.id.user', user: username }, password },
    what: `logging in as "${username}"`,
  });
  return body.access_token;
}

/** Whether the user exists (admin API; needs an admin token). */
export async function userExists(baseUrl: string, token: string, userId: string): Promise<boolean> {
  try {
    await call(baseUrl, 'GET', `/_synapse/admin/v2/users/${encodeURIComponent(userId)}`, {
      token,
      what: `looking up ${userId}`,
    });
    return true;
  } catch (err) {
    if (err instanceof SynapseApiError && err.status === 404) return false;
    throw err;
  }
}

/** Makes an existing user a server admin. */
export async function makeAdmin(baseUrl: string, token: string, userId: string): Promise<void> {
  await call(baseUrl, 'PUT', `/_synapse/admin/v2/users/${encodeURIComponent(userId)}`, {
    json: { admin: true },
    token,
    what: `making ${userId} an admin`,
  });
}
