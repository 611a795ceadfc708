/**
 * Crash-safe replacement of a file that holds secrets (password hashes, session hashes): as
 * shared/durable.ts (temp file, fsync, rename, fsync the folder), but the temp file is created
 * with mode 0600, so the content is never readable by others, not even for an instant and not
 * whatever mode an older copy of the file had (the rename replaces it).
 */
import { mkdir, open, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fsyncDir, tempPathFor } from '../../../shared/durable.js';

export const PRIVATE_FILE_MODE = 0o600;

export async function writePrivateFileDurably(target: string, content: string): Promise<void> {
  await mkdir(dirname(target), { recursive: true });
  const temp = tempPathFor(target);
  // The umask can only take bits away from 0600.
  const handle = await open(temp, 'wx', PRIVATE_FILE_MODE);
  try {
    await handle.writeFile(content);
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
