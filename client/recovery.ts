/**
 * Recovery files: text a person typed or edited that could not be saved (its lock was lost, the
 * cluster was down), kept on the local disk so that nothing typed is ever thrown away.
 *
 * They go to $XDG_STATE_HOME/dfs/recovery/ (the XDG base-directory spec's place for state that
 * should survive a restart), or ~/.local/state/dfs/recovery/ without it; the folder is 0700 and
 * each file 0600, since the text may be private.
 */
import { createHash } from 'node:crypto';
import { mkdir, open } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';

export function recoveryDir(env: NodeJS.ProcessEnv = process.env): string {
  const state = env.XDG_STATE_HOME;
  // The spec says a relative value is to be ignored.
  const base = state && isAbsolute(state) ? state : join(homedir(), '.local', 'state');
  return join(base, 'dfs', 'recovery');
}

/** Writes `content` to a new recovery file for the dfs file `name` and returns its path. */
export async function saveRecovery(name: string, content: string, now = new Date()): Promise<string> {
  const dir = recoveryDir();
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const stamp = now.toISOString().replace(/[:.]/g, '-');
  const path = join(dir, `${fileNameFor(name)}.${stamp}.${process.pid}`);
  const handle = await open(path, 'wx', 0o600);
  try {
    await handle.writeFile(content, 'utf8');
    await handle.sync();
  } finally {
    await handle.close();
  }
  return path;
}

/** Most file systems allow 255 bytes a name; the stamp and pid take about 40. */
const MAX_NAME_BYTES = 180;

/**
 * One flat folder: the name's slashes become %2F, so that the file name still says which file
 * it was. A name too long for that is cut, with a hash of the whole name to keep it apart.
 */
function fileNameFor(name: string): string {
  const encoded = name.replaceAll('%', '%25').replaceAll('/', '%2F');
  if (Buffer.byteLength(encoded) <= MAX_NAME_BYTES) return encoded;
  let cut = '';
  for (const char of encoded) {
    if (Buffer.byteLength(cut + char) > MAX_NAME_BYTES - 17) break;
    cut += char;
  }
  return `${cut}-${createHash('sha256').update(name).digest('hex').slice(0, 16)}`;
}
