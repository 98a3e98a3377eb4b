export const ENGINE_NAME = 'synapse-backup';
/** Kept equal to package.json's version (a unit test checks). */
export const ENGINE_VERSION = '0.1.0';
