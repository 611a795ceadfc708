/**
 * Opening text in the user's editor: $VISUAL or $EDITOR run on a temporary file (through
 * /bin/sh, as git does, so that `EDITOR="code --wait"` works), or inquirer's editor prompt when
 * neither is set. Resolves with the text as saved when the editor closes.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';

export interface EditOptions {
  /** stdin is a terminal the editor may take over; otherwise the editor gets no stdin. */
  interactive: boolean;
}

/** The editor command the user configured, or null. */
export function configuredEditor(): string | null {
  const command = (process.env.VISUAL || process.env.EDITOR || '').trim();
  return command === '' ? null : command;
}

export async function editText(initial: string, fileName: string, options: EditOptions): Promise<string> {
  const command = configuredEditor();
  if (command === null) {
    if (!options.interactive) throw new Error('edit needs $EDITOR or $VISUAL when input is not a terminal');
    const { editor } = await import('@inquirer/prompts');
    const dot = basename(fileName).lastIndexOf('.');
    return editor({ message: `Edit ${fileName}`, default: initial, waitForUserInput: false, postfix: dot > 0 ? basename(fileName).slice(dot) : '.txt' });
  }
  // The temp file keeps the file's base name, so that the editor picks the right syntax mode.
  const dir = await mkdtemp(join(tmpdir(), 'dfs-edit-'));
  const path = join(dir, basename(fileName));
  try {
    await writeFile(path, initial, { mode: 0o600 });
    const status = await run(command, path, options.interactive);
    if (status !== 0) throw new Error(`the editor (${command}) ${status === null ? 'was killed' : `exited with status ${status}`}; nothing saved`);
    return await readFile(path, 'utf8');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function run(command: string, path: string, interactive: boolean): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', `${command} "$1"`, 'sh', path], { stdio: [interactive ? 'inherit' : 'ignore', 'inherit', 'inherit'] });
    child.once('error', (err) => reject(new Error(`cannot start the editor (${command}): ${err.message}`)));
    child.once('exit', (code) => resolve(code));
  });
}
