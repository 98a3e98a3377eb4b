import { ConfigError } from '../errors';

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/** The seed's default id: UTC creation time as YYYYMMDDHHMMSS. */
export function defaultBackupId(now = new Date()): string {
  return now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

export function validateBackupId(id: string): string {
  if (!ID_PATTERN.test(id) || id.includes('..')) {
    throw new ConfigError(
      `backup id "${id}" is not valid: use up to 100 letters, digits, ".", "_" or "-", starting with a letter or digit`,
    );
  }
  return id;
}

export const OBJECT_SUFFIX = '.tar.enc';
export const MANIFEST_SUFFIX = '.manifest.json';
export const PENDING_SUFFIX = '.pending';
