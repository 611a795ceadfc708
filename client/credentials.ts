/**
 * Where a client finds what it needs to reach a cluster safely: the cluster CA, and (see
 * session-file.ts) its login session. Kept in the user's config folder:
 * $DFS_CONFIG_DIR, else $XDG_CONFIG_HOME/dfs, else ~/.config/dfs.
 *
 * The CA, first found of:
 *   1. --ca FILE, or $DFS_CA;
 *   2. CONFIG/ca/HOST_PORT.crt for the directory's host and port, which `npm start` writes, so
 *      that a client on the same machine trusts the cluster it started without being told;
 *   3. ./data/tls/ca.crt, `npm start`'s default folder, when run from the same folder.
 * A ws:// directory URL needs --insecure (and then no CA); a wss:// one needs a CA.
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { DfsError } from '../shared/errors.js';
import type { Transport } from '../shared/tls/transport.js';
import { checkScheme } from '../shared/tls/transport.js';

export function configDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.DFS_CONFIG_DIR) return env.DFS_CONFIG_DIR;
  if (env.XDG_CONFIG_HOME) return join(env.XDG_CONFIG_HOME, 'dfs');
  return join(homedir(), '.config', 'dfs');
}

/** The file name a cluster's things are kept under in the config folder: its directory's host and port. */
export function clusterKey(directoryUrl: string): string {
  const url = new URL(directoryUrl);
  const port = url.port || (url.protocol === 'wss:' ? '443' : '80');
  return `${url.hostname.replace(/[^A-Za-z0-9.-]/g, '_')}_${port}`;
}

/** Where `npm start` leaves a copy of its CA for clients on this machine. */
export function knownCaPath(directoryUrl: string, env: NodeJS.ProcessEnv = process.env): string {
  return join(configDir(env), 'ca', `${clusterKey(directoryUrl)}.crt`);
}

export interface TransportChoice {
  directoryUrl: string;
  /** --ca FILE */
  ca?: string | undefined;
  /** --insecure */
  insecure?: boolean | undefined;
}

async function readCa(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new DfsError('BAD_REQUEST', `cannot read the CA certificate ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** The transport a client uses for this directory URL; BAD_REQUEST saying what to pass when none fits. */
export async function clientTransport(choice: TransportChoice, env: NodeJS.ProcessEnv = process.env): Promise<Transport> {
  const kind = choice.insecure ? 'insecure' : 'tls';
  checkScheme(choice.directoryUrl, { kind });
  if (kind === 'insecure') return { kind: 'insecure' };
  const explicit = choice.ca ?? (env.DFS_CA || undefined);
  if (explicit) {
    const ca = await readCa(explicit);
    if (ca === null) throw new DfsError('BAD_REQUEST', `the CA certificate ${explicit} does not exist`);
    return { kind: 'tls', ca };
  }
  for (const path of [knownCaPath(choice.directoryUrl, env), join('data', 'tls', 'ca.crt')]) {
    const ca = await readCa(path);
    if (ca !== null) return { kind: 'tls', ca };
  }
  throw new DfsError(
    'BAD_REQUEST',
    `no CA certificate for ${choice.directoryUrl}: pass --ca FILE or set DFS_CA (npm start prints where its CA is; on the machine that runs it, clients find it by themselves)`,
  );
}
