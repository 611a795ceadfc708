/**
 * What the one-shot CLI and the REPL share on top of the client library: connecting with a
 * useful message when the directory is not there, creating a file that a write names but that
 * does not exist yet, and turning any error into one line for a person.
 */
import { clientTransport } from './credentials.js';
import { DfsClient } from './dfs-client.js';
import { DfsError } from '../shared/errors.js';
import { assertValidName } from '../shared/names.js';

export interface SessionOptions {
  directoryUrl: string;
  /** --ca FILE and --insecure (credentials.ts finds the CA otherwise). */
  ca?: string | undefined;
  insecure?: boolean | undefined;
  clientName?: string;
  lockTimeoutMs: number;
}

/**
 * `dfs lock NAME -- CMD` runs CMD with these set: a `dfs` command in CMD writes to NAME under
 * that lock (its token) instead of waiting for it, and fails with LOCK_LOST once it is lost.
 */
export const INHERITED_LOCK_NAME = 'DFS_LOCK_NAME';
export const INHERITED_LOCK_TOKEN = 'DFS_LOCK_TOKEN';

export async function openSession(options: SessionOptions, onLockLost?: (name: string, error: DfsError) => void): Promise<DfsClient> {
  const inherited = inheritedLock(process.env);
  let client: DfsClient;
  try {
    const transport = await clientTransport({ directoryUrl: options.directoryUrl, ca: options.ca, insecure: options.insecure });
    client = await DfsClient.connect(options.directoryUrl, {
      transport,
      lockTimeoutMs: options.lockTimeoutMs,
      ...(options.clientName ? { clientName: options.clientName } : {}),
      ...(onLockLost ? { onLockLost } : {}),
    });
  } catch (err) {
    if (err instanceof DfsError && (err.code === 'UNAVAILABLE' || err.code === 'CLOSED' || err.code === 'TIMEOUT')) {
      throw new DfsError(err.code, `${err.message}; is the cluster running? (start one with \`npm start\`, or point --directory / DFS_DIRECTORY at one)`);
    }
    throw err;
  }
  if (inherited) client.adoptLock(inherited.name, inherited.token);
  return client;
}

function inheritedLock(env: NodeJS.ProcessEnv): { name: string; token: number } | null {
  const name = env[INHERITED_LOCK_NAME];
  const token = env[INHERITED_LOCK_TOKEN];
  if (!name && !token) return null;
  if (!name || !token || !/^\d{1,15}$/.test(token)) {
    throw new DfsError('BAD_REQUEST', `${INHERITED_LOCK_NAME} and ${INHERITED_LOCK_TOKEN} (set by dfs lock NAME -- CMD) must both be set, the token a whole number; got ${JSON.stringify(name ?? '')} and ${JSON.stringify(token ?? '')}`);
  }
  assertValidName(name);
  return { name, token: Number(token) };
}

/** Creates name unless it exists. Returns true when this call created it. */
export async function ensureFile(client: DfsClient, name: string): Promise<boolean> {
  try {
    await client.create(name);
    return true;
  } catch (err) {
    if (err instanceof DfsError && err.code === 'EXISTS') return false;
    throw err;
  }
}

/** Runs a write; when the file does not exist yet, creates it and runs the write again. */
export async function writeCreating<T>(client: DfsClient, name: string, write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (err) {
    if (!(err instanceof DfsError && err.code === 'NOT_FOUND')) throw err;
    await ensureFile(client, name);
    return write();
  }
}

const SYSTEM_ERRORS: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
  EISDIR: 'is a directory',
  ENOTDIR: 'not a directory',
  EEXIST: 'already exists',
  ENOSPC: 'no space left on the device',
};

/** One line saying what went wrong, never a stack trace. */
export function errorMessage(err: unknown): string {
  if (err instanceof DfsError) return err.message;
  const sys = err as NodeJS.ErrnoException;
  if (sys && typeof sys.code === 'string' && SYSTEM_ERRORS[sys.code]) {
    return sys.path ? `${sys.path}: ${SYSTEM_ERRORS[sys.code]}` : `${SYSTEM_ERRORS[sys.code]} (${sys.code})`;
  }
  if (err instanceof Error) return err.message.split('\n', 1)[0]!;
  return String(err);
}
