/**
 * register-user and promote-user-admin, through Synapse's admin API with the
 * registration shared secret the charm keeps in its Juju secret
 * (src/charm/registration.ts). The generated password is an action result
 * (Juju takes results only as action-set argv) and nowhere else: it is
 * registered with HookTools as a secret, so every log, error and other
 * hook-tool call has it redacted.
 */
import type { ActionResults } from '../../juju/hook-tools';
import { randomToken, readRegistrationSecret } from '../registration';
import {
  SynapseApiError,
  login,
  makeAdmin,
  registerWithSharedSecret,
  userExists,
} from '../synapse-admin';
import { ActionFailure, booleanParam, type ActionContext, type ActionHandler } from './context';

/** The charm's own admin user, used for promote-user-admin; its password is in the Juju secret. */
export const CHARM_ADMIN = 'synapse-charm-admin';

/** Synapse's localpart rule (synapse/types: a-z 0-9 . _ = - / +), lower case. */
const LOCALPART = /^[a-z0-9._=\-/+]{1,255}$/;

function username(a: ActionContext): string {
  const raw = a.params.username;
  const name = typeof raw === 'string' ? raw.trim().replace(/^@/, '').split(':')[0] : '';
  if (!LOCALPART.test(name)) {
    throw new ActionFailure(
      `username must be a Matrix localpart (lower-case letters, digits and . _ = - / +): juju run ${a.ctx.unitName} ${a.ctx.actionName} username=<name>`,
    );
  }
  if (name === CHARM_ADMIN) throw new ActionFailure(`"${CHARM_ADMIN}" is reserved for the charm`);
  return name;
}

async function sharedSecret(a: ActionContext) {
  const secret = await readRegistrationSecret(a.tools);
  if (!secret) {
    throw new ActionFailure(
      'the registration secret does not exist yet: wait until the unit is active (the leader creates it when Synapse is set up)',
    );
  }
  return secret;
}

function failure(err: unknown, what: string): never {
  if (err instanceof SynapseApiError) {
    if (err.errcode === 'M_USER_IN_USE')
      throw new ActionFailure(`${what}: the user already exists`);
    throw new ActionFailure(`${err.message}; check that the unit is active (juju status)`);
  }
  throw err;
}

export const registerUser: ActionHandler = async (a) => {
  const name = username(a);
  const admin = booleanParam(a, 'admin');
  const secret = await sharedSecret(a);
  const password = randomToken(24);
  a.revealInResults(password);
  let userId: string;
  try {
    ({ userId } = await registerWithSharedSecret(a.overrides.synapseUrl, secret.sharedSecret, {
      username: name,
      password,
      admin,
    }));
  } catch (err) {
    failure(err, `cannot register "${name}"`);
  }
  await a.log(`registered ${userId}${admin ? ' as an admin' : ''}`);
  const results: ActionResults = { 'user-id': userId, password, admin };
  return results;
};

/** A token of the charm's admin user, registering it on first use. */
async function adminToken(a: ActionContext): Promise<string> {
  const secret = await sharedSecret(a);
  const url = a.overrides.synapseUrl;
  try {
    return await login(url, CHARM_ADMIN, secret.adminPassword);
  } catch (err) {
    if (!(err instanceof SynapseApiError) || err.status !== 403) failure(err, 'cannot log in');
  }
  try {
    const made = await registerWithSharedSecret(url, secret.sharedSecret, {
      username: CHARM_ADMIN,
      password: secret.adminPassword,
      admin: true,
    });
    return made.accessToken;
  } catch (err) {
    failure(err, `cannot set up the charm's admin user "${CHARM_ADMIN}"`);
  }
}

export const promoteUserAdmin: ActionHandler = async (a) => {
  const name = username(a);
  const serverName = a.config.serverName;
  if (!serverName)
    throw new ActionFailure(
      `server-name is not set: juju config ${a.ctx.appName} server-name=<matrix domain>`,
    );
  const userId = `@${name}:${serverName}`;
  const token = await adminToken(a);
  a.tools.addSecret(token);
  try {
    if (!(await userExists(a.overrides.synapseUrl, token, userId))) {
      throw new ActionFailure(
        `${userId} does not exist: juju run ${a.ctx.unitName} register-user username=${name}`,
      );
    }
    await makeAdmin(a.overrides.synapseUrl, token, userId);
  } catch (err) {
    failure(err, `cannot promote ${userId}`);
  }
  await a.log(`${userId} is now a server admin`);
  return { 'user-id': userId, admin: true };
};
