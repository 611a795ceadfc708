/**
 * Crash-safe file replacement: write a temp file, fsync it, rename it over the target, fsync the
 * folder. A crash at any instant leaves the old content or the new, never a mix.
 */
import { open, readFile, rename, mkdir, unlink } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';

export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** The content of `path`, or null when there is no such file (other errors are thrown). */
export async function readIfExists(path: string): Promise<Buffer | null> {
  try {
    return await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

export function tempPathFor(target: string): string {
  return join(dirname(target), `.${basename(target)}.${randomBytes(4).toString('hex')}.tmp`);
}

/** Files that hold secrets (keys, password and session hashes): readable by their owner only. */
export const PRIVATE_FILE_MODE = 0o600;

/**
 * Replaces target with content (or the pieces of content, written as they come), durably. With
 * `mode` (PRIVATE_FILE_MODE for a secret) the temp file is created with it, so the content is
 * never readable by others, not for an instant, whatever mode an older copy had.
 */
export async function writeFileDurably(target: string, content: Buffer | string | AsyncIterable<string>, options: { mode?: number } = {}): Promise<void> {
  await mkdir(dirname(target), { recursive: true });
  const temp = tempPathFor(target);
  const handle = await open(temp, 'wx', options.mode ?? 0o666);
  try {
    // The umask can only take bits away; chmod makes the mode exact.
    if (options.mode !== undefined) await handle.chmod(options.mode);
    if (typeof content === 'string' || Buffer.isBuffer(content)) {
      await handle.writeFile(content);
    } else {
      for await (const piece of content) await handle.writeFile(piece);
    }
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => {});
    await unlink(temp).catch(() => {});
    throw err;
  }
  await handle.close();
  try {
    await rename(temp, target);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
  await fsyncDir(dirname(target));
}
