/**
 * What each REPL command does, with the words seed 003's client prints around them ("Write some
 * text...", "Versions match, reading from cache...", "File unlocked..."), so that a session reads
 * like the seed's example. The terminal (prompts, colour, the lock-wait line) is behind ReplIo.
 */
import type { DfsClient, LockHandle } from './dfs-client.js';
import { DfsError, toDfsError } from '../shared/errors.js';
import { editText, configuredEditor } from './editor.js';
import { isText, lockWaitMessage, renderStat, renderStatus } from './format.js';
import { saveRecovery } from './recovery.js';
import { HELP_TEXT, type ReplCommandName } from './repl-syntax.js';
import { ensureFile, errorMessage } from './session.js';

export interface ReplIo {
  /** Input is a person at a terminal (prompts, colour); otherwise a script piping commands in. */
  readonly interactive: boolean;
  print(text: string): void;
  /** The seed's dashed line around content. */
  rule(): void;
  /** A status line about a lock wait, replaced by the next one. */
  waiting(message: string): void;
  endWaiting(): void;
  /** The lines of a write, up to `<end>`; null when the user cancelled or the input ended first. */
  readBody(): Promise<string[] | null>;
}

export class ReplCommands {
  constructor(
    private readonly client: DfsClient,
    private readonly io: ReplIo,
    private readonly lockTimeoutMs: number,
  ) {}

  /** Runs one parsed command; throws on failure (the loop prints the error). */
  async run(command: Exclude<ReplCommandName, 'quit'>, args: string[], signal: AbortSignal): Promise<void> {
    const [arg] = args;
    const name = arg as string; // the parser checked the count of arguments
    switch (command) {
      case 'create':
        return this.create(name);
      case 'write':
        return this.writeLines(name, 'replace', signal);
      case 'append':
        return this.writeLines(name, 'append', signal);
      case 'read':
        return this.read(name);
      case 'edit':
        return this.edit(name, signal);
      case 'list':
        return this.list(arg);
      case 'rm':
        await this.client.delete(name, { lockTimeoutMs: this.lockTimeoutMs, signal, onQueued: (ev) => this.io.waiting(lockWaitMessage(ev)) }).finally(() => this.io.endWaiting());
        return this.io.print(`Deleted ${name}`);
      case 'stat':
        return this.io.print(renderStat(await this.client.stat(name)));
      case 'status':
        return this.io.print(renderStatus(await this.client.status()));
      case 'lock': {
        if (this.client.holds(name)) return this.io.print(`You already hold the lock on ${name}`);
        const lock = await this.lock(name, signal);
        return this.io.print(`Locked ${name} (fencing token ${lock.token}); other clients' writes wait until you unlock ${name}`);
      }
      case 'unlock':
        await this.client.unlock(name);
        return this.io.print(`Unlocked ${name}`);
      case 'help':
        return this.io.print(arg ? this.helpFor(arg) : HELP_TEXT);
      case 'end':
        throw new DfsError('BAD_REQUEST', '<end> finishes a <write>; there is no write in progress');
    }
  }

  private helpFor(word: string): string {
    const line = HELP_TEXT.split('\n').find((l) => l.trim().startsWith(word) || l.trim().startsWith(`<${word}>`));
    return line ? line.trim() : `no command ${JSON.stringify(word)}; type help for the list`;
  }

  private async create(name: string): Promise<void> {
    const placement = await this.client.create(name);
    const replicas = placement.replicas.map((r) => r.id).join(', ') || 'none';
    this.io.print(`Created ${name} (primary ${placement.primary.id}; replicas ${replicas})`);
  }

  private async list(prefix: string | undefined): Promise<void> {
    const names = await this.client.list(prefix);
    this.io.print(names.length === 0 ? (prefix ? `No files starting with ${prefix}` : 'No files yet; create one with create NAME or <write> NAME') : names.join('\n'));
  }

  /** Takes name's lock, showing the place in line while waiting; Ctrl-C (signal) stops waiting. */
  private async lock(name: string, signal: AbortSignal): Promise<LockHandle> {
    let waited = false;
    const hint = this.io.interactive ? ' (Ctrl-C stops waiting)' : '';
    try {
      const lock = await this.client.lock(name, {
        timeoutMs: this.lockTimeoutMs,
        signal,
        onQueued: (event) => {
          waited = true;
          this.io.waiting(lockWaitMessage(event) + hint);
        },
      });
      this.io.endWaiting();
      if (waited) this.io.print(`Got the lock on ${name}`);
      return lock;
    } catch (err) {
      this.io.endWaiting();
      if (err instanceof DfsError && err.code === 'CANCELLED') throw new DfsError('CANCELLED', `stopped waiting for the lock on ${name}; nothing changed`);
      throw err;
    }
  }

  /**
   * The lock this command must release afterwards, or null when the user holds it (lock NAME).
   * Also null when the user's lock was lost: the write must then fail, not take a new lock.
   */
  private async lockUnlessHeld(name: string, signal: AbortSignal): Promise<LockHandle | null> {
    return this.client.lockState(name) === 'none' ? this.lock(name, signal) : null;
  }

  /** The error of a save that failed, once the text is kept in a recovery file, saying where. */
  private async keptText(name: string, text: string, err: unknown, what: string): Promise<DfsError> {
    const error = toDfsError(err);
    const message = errorMessage(err);
    try {
      const path = await saveRecovery(name, text);
      return new DfsError(error.code, `${message}; ${what} is kept in ${path}`, error.details);
    } catch (saveError) {
      return new DfsError(error.code, `${message}; and ${what} could not be kept in a recovery file: ${errorMessage(saveError)}`, error.details);
    }
  }

  private async release(name: string, lock: LockHandle | null): Promise<void> {
    if (lock === null) {
      this.io.print(`(You still hold the lock on ${name}; unlock ${name} releases it)`);
      return;
    }
    await lock.release();
    this.io.print('File unlocked...');
  }

  /** The file's current version and primary, creating the file when it does not exist. */
  private async currentVersion(name: string): Promise<{ version: number; size: number; primary: string }> {
    try {
      return await this.client.stat(name);
    } catch (err) {
      if (!(err instanceof DfsError && err.code === 'NOT_FOUND')) throw err;
      if (await ensureFile(this.client, name)) this.io.print(`Created ${name} (it did not exist)`);
      return this.client.stat(name);
    }
  }

  /** `<write>`/`append` (mode append) and `write` (mode replace): lines typed up to `<end>`. */
  private async writeLines(name: string, mode: 'replace' | 'append', signal: AbortSignal): Promise<void> {
    const lock = await this.lockUnlessHeld(name, signal);
    try {
      const { version, size, primary } = await this.currentVersion(name);
      this.io.print('Write some text...');
      this.io.print(`<end> to finish writing${mode === 'replace' ? ` (replaces the content of ${name})` : ''}`);
      this.io.rule();
      const lines = await this.io.readBody();
      this.io.rule();
      if (lines === null) {
        this.io.print('Nothing written');
      } else if (mode === 'append' && lines.length === 0) {
        this.io.print('Nothing to append');
      } else {
        const content = lines.length === 0 ? '' : lines.join('\n') + '\n';
        this.io.print(`Sending version: ${version + 1}`);
        // Appending to an empty file is replacing it (we hold the lock, so it stays empty until
        // we write); sent as a replace, the client can cache the result (write-through), as the
        // seed's client does after its first <write>.
        const replace = mode === 'replace' || size === 0;
        const result = await (replace ? this.client.write(name, content) : this.client.append(name, content)).catch(async (err: unknown) => {
          throw await this.keptText(name, content, err, 'what you typed');
        });
        this.io.print(`File successfully written to ${primary} (${name} version ${result.version}, ${result.size} bytes)`);
        if (result.skipped.length > 0) this.io.print(`(${result.skipped.join(', ')} missed this write and will catch up when back)`);
      }
    } catch (err) {
      await lock?.release().catch(() => {});
      throw err;
    }
    await this.release(name, lock);
    this.io.print('Exiting <write> mode...');
  }

  private async read(name: string): Promise<void> {
    const cached = this.client.cache.get(name);
    this.io.print(cached ? 'Checking version...' : 'REQUESTING FILE FROM FILE SERVER - FILE NOT IN CACHE');
    const result = await this.client.read(name);
    if (result.source === 'cache') this.io.print(`Versions match, reading from cache... (version ${result.version}, confirmed by ${result.server})`);
    else if (cached) this.io.print(`Cached version ${cached.version} is out of date; reading version ${result.version} from ${result.server}...`);
    this.io.rule();
    if (isText(result.content)) {
      const text = result.content.toString('utf8');
      this.io.print(text.endsWith('\n') ? text.slice(0, -1) : text);
    } else {
      this.io.print(`(${name} is binary, ${result.size} bytes; copy it out with: dfs get ${name})`);
    }
    this.io.rule();
    if (result.source === 'server') {
      const nowCached = this.client.cache.get(name)?.version === result.version;
      this.io.print(nowCached ? `${name} successfully cached (version ${result.version}, from ${result.server})...` : `${name} version ${result.version} read from ${result.server} (too large to cache)`);
    }
    this.io.print('Exiting <read> mode...');
  }

  /** Locks name, opens it in the user's editor, saves it if it changed, unlocks. */
  private async edit(name: string, signal: AbortSignal): Promise<void> {
    const lock = await this.lockUnlessHeld(name, signal);
    try {
      let current = '';
      let exists = true;
      let version = 0;
      try {
        const result = await this.client.read(name);
        if (!isText(result.content)) throw new DfsError('BAD_REQUEST', `${name} is binary (${result.size} bytes); edit works on text; use dfs get and dfs put`);
        current = result.content.toString('utf8');
        version = result.version;
      } catch (err) {
        if (!(err instanceof DfsError && err.code === 'NOT_FOUND')) throw err;
        exists = false;
      }
      const editorName = configuredEditor() ?? 'the editor';
      this.io.print(exists ? `Editing ${name} (version ${version}) in ${editorName}; save and close it to write it back` : `${name} is new; it is created when you save`);
      const edited = await editText(current, name, { interactive: this.io.interactive });
      if (exists && edited === current) {
        this.io.print('No changes; nothing written');
      } else if (!exists && edited === '') {
        this.io.print(`Nothing written; ${name} was not created`);
      } else {
        const result = await (async () => {
          if (!exists) await ensureFile(this.client, name);
          return this.client.write(name, edited);
        })().catch(async (err: unknown) => {
          throw await this.keptText(name, edited, err, 'your edited text');
        });
        this.io.print(`Saved ${name}: version ${result.version}, ${result.size} bytes`);
        if (result.skipped.length > 0) this.io.print(`(${result.skipped.join(', ')} missed this write and will catch up when back)`);
      }
    } finally {
      if (lock) await lock.release().then(() => this.io.print(`Unlocked ${name}`), () => {});
    }
  }
}
