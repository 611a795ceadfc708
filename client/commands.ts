/**
 * The one-shot commands of `dfs`. Each connects, does one thing, and returns the exit status;
 * cli.ts has already checked the arguments. Content moves as streams, so `cat`, `get` and `put`
 * work in bounded memory whatever the size, and byte for byte (binary is fine).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, open, rm, stat as statPath, type FileHandle } from 'node:fs/promises';
import { constants as osConstants, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { DfsClient, WriteOptions } from './dfs-client.js';
import { DfsError, toDfsError } from '../shared/errors.js';
import type { QueuedEvent, WriteResult } from '../shared/protocol.js';
import { formatSize, ordinal, renderStat, renderStatus } from './format.js';
import { progressBar } from './progress.js';
import { INHERITED_LOCK_NAME, INHERITED_LOCK_TOKEN, openSession, writeCreating, type SessionOptions } from './session.js';

export type CommandName = 'create' | 'write' | 'append' | 'cat' | 'put' | 'get' | 'ls' | 'rm' | 'stat' | 'status' | 'lock' | 'server' | 'rebalance';

export interface CommandRequest {
  name: CommandName;
  args: string[];
  /** `lock`: the command to run while holding the lock. */
  command: string[];
  session: SessionOptions;
}

/** Standard input larger than this is spooled to a temp file instead of held in memory. */
const SPOOL_AFTER_BYTES = 8 << 20;

const print = (text: string) => process.stdout.write(text + '\n');

/** "waiting for lock on NAME (held by X, Nth in line)", on stderr while a lock wait lasts. */
function waitingNotice(event: QueuedEvent): void {
  process.stderr.write(`waiting for lock on ${event.name} (held by ${event.holder}, ${ordinal(event.position)} in line)\n`);
}

/*
 * Ctrl-C ends a one-shot command at once (the default action of SIGINT), as for any Unix
 * command: the connections close, which takes this client out of any lock queue and frees any
 * lock it holds, and a write cut short is never applied. Only `lock NAME -- CMD` waits instead,
 * for CMD, which gets the same Ctrl-C from the terminal.
 */
export async function runCommand(request: CommandRequest): Promise<number> {
  const client = await openSession(request.session, request.name === 'lock' ? lockLostNotice(request) : undefined);
  try {
    return await dispatch(client, request);
  } finally {
    client.close();
  }
}

async function dispatch(client: DfsClient, request: CommandRequest): Promise<number> {
  const [first, second] = request.args as [string, string | undefined];
  const writeOptions = (): WriteOptions => ({ lockTimeoutMs: request.session.lockTimeoutMs, onQueued: waitingNotice });
  switch (request.name) {
    case 'create': {
      const placement = await client.create(first);
      print(`created ${first} (primary ${placement.primary.id}; replicas ${placement.replicas.map((r) => r.id).join(', ') || 'none'})`);
      return 0;
    }
    case 'write':
    case 'append':
      return writeFromStdin(client, first, request.name === 'write' ? 'replace' : 'append', writeOptions());
    case 'cat':
      return cat(client, first);
    case 'get':
      return get(client, first, second);
    case 'put':
      return put(client, first, second, writeOptions());
    case 'ls':
      for (const name of await client.list(first)) print(name);
      return 0;
    case 'rm':
      await client.delete(first, writeOptions());
      print(`deleted ${first}`);
      return 0;
    case 'stat':
      print(renderStat(await client.stat(first)));
      return 0;
    case 'status':
      print(renderStatus(await client.status()));
      return 0;
    case 'lock':
      return runLocked(client, first, request.command, request.session.lockTimeoutMs);
    case 'server': {
      const result = await client.server(first as 'drain' | 'undrain' | 'remove', second!);
      const holds = `${result.files} cop${result.files === 1 ? 'y' : 'ies'}, ${result.primaries} as primary`;
      if (first === 'drain') print(`draining ${result.id} (it holds ${holds}): it takes no new files and its copies move to other servers; dfs status shows progress, and dfs server remove ${result.id} works once it holds none`);
      else if (first === 'undrain') print(`${result.id} takes new files again (it holds ${holds})`);
      else print(`removed ${result.id} from the cluster`);
      return 0;
    }
    case 'rebalance': {
      const result = await client.rebalance();
      const spread = Object.entries(result.primaries).map(([id, n]) => `${id} ${n}`).join(', ');
      print(`moved ${result.moved} primar${result.moved === 1 ? 'y' : 'ies'}; primaries now: ${spread || 'no live servers'}`);
      return 0;
    }
  }
}

function summary(verb: string, result: WriteResult): string {
  const skipped = result.skipped.length > 0 ? `; ${result.skipped.join(', ')} will catch up` : '';
  return `${verb} ${result.name}: version ${result.version}, ${formatSize(result.size)}${skipped}`;
}

// ------------------------------------------------------------------ reading

/** Writes a stream to stdout, honouring back-pressure. */
async function toStdout(stream: AsyncIterable<Buffer>, onChunk: (bytes: number) => void): Promise<void> {
  for await (const chunk of stream) {
    onChunk(chunk.length);
    if (!process.stdout.write(chunk)) await once(process.stdout, 'drain');
  }
}

async function cat(client: DfsClient, name: string): Promise<number> {
  // `dfs cat big | head` closes the pipe early: that is the reader's choice, not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
  });
  const { meta, stream } = await client.readStream(name);
  const bar = progressBar(`cat ${name}`);
  let done = 0;
  try {
    await toStdout(stream, (bytes) => bar.update((done += bytes), meta.size));
  } finally {
    bar.stop();
  }
  return 0;
}

async function get(client: DfsClient, name: string, local: string | undefined): Promise<number> {
  if (local === '-') return cat(client, name);
  let path = local ?? basename(name);
  const existing = await statPath(path).catch(() => null);
  if (existing?.isDirectory()) path = join(path, basename(name));
  const bar = progressBar(`get ${name}`);
  try {
    const meta = await client.readToFile(name, path, (done, total) => bar.update(done, total));
    bar.stop(); // before the summary line, so that the two do not share a line
    print(`got ${name} -> ${path}: version ${meta.version}, ${formatSize(meta.size)}`);
  } finally {
    bar.stop();
  }
  return 0;
}

// ------------------------------------------------------------------ writing

async function put(client: DfsClient, local: string, name: string | undefined, options: WriteOptions): Promise<number> {
  const target = name ?? basename(local);
  const info = await statPath(local);
  if (!info.isFile()) throw new DfsError('BAD_REQUEST', `${local} is not a regular file`);
  const bar = progressBar(`put ${target}`);
  try {
    const result = await writeCreating(client, target, () => client.writeFromFile(target, local, { ...options, mode: 'replace', onProgress: (done, total) => bar.update(done, total) }));
    bar.stop();
    print(summary(`put ${local} ->`, result));
  } finally {
    bar.stop();
  }
  return 0;
}

/** Standard input, in memory when small, else spooled to a temp file (removed by dispose). */
type Input = { kind: 'memory'; content: Buffer; dispose(): Promise<void> } | { kind: 'file'; path: string; dispose(): Promise<void> };

async function readStdin(): Promise<Input> {
  const chunks: Buffer[] = [];
  let held = 0;
  let spool: { dir: string; path: string; handle: FileHandle } | null = null;
  try {
    for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
      if (spool) {
        await spool.handle.write(chunk);
        continue;
      }
      chunks.push(chunk);
      held += chunk.length;
      if (held > SPOOL_AFTER_BYTES) {
        const dir = await mkdtemp(join(tmpdir(), 'dfs-stdin-'));
        spool = { dir, path: join(dir, 'stdin'), handle: await open(join(dir, 'stdin'), 'w', 0o600) };
        for (const held of chunks) await spool.handle.write(held);
        chunks.length = 0;
      }
    }
  } catch (err) {
    if (spool) {
      await spool.handle.close().catch(() => {});
      await rm(spool.dir, { recursive: true, force: true });
    }
    throw err;
  }
  if (!spool) return { kind: 'memory', content: Buffer.concat(chunks), dispose: async () => {} };
  await spool.handle.close();
  const { dir, path } = spool;
  return { kind: 'file', path, dispose: () => rm(dir, { recursive: true, force: true }) };
}

async function writeFromStdin(client: DfsClient, name: string, mode: 'replace' | 'append', options: WriteOptions): Promise<number> {
  if (process.stdin.isTTY) process.stderr.write(`reading the content to ${mode === 'replace' ? 'write to' : 'append to'} ${name} from the terminal; end it with Ctrl-D\n`);
  const input = await readStdin();
  const bar = progressBar(`${mode === 'replace' ? 'write' : 'append'} ${name}`);
  const withProgress: WriteOptions = { ...options, onProgress: (done, total) => bar.update(done, total) };
  try {
    const result = await writeCreating(client, name, () => {
      if (input.kind === 'file') return client.writeFromFile(name, input.path, { ...withProgress, mode });
      return mode === 'replace' ? client.write(name, input.content, withProgress) : client.append(name, input.content, withProgress);
    });
    bar.stop();
    print(summary(mode === 'replace' ? 'wrote' : 'appended to', result));
    return 0;
  } finally {
    bar.stop();
    await input.dispose();
  }
}

// ------------------------------------------------------------------ lock NAME -- CMD

/** `lock NAME -- CMD` says at once when the lock is lost while CMD runs. */
function lockLostNotice(request: CommandRequest): (name: string, error: DfsError) => void {
  const [name] = request.args;
  return (lost, error) => {
    if (lost === name) process.stderr.write(`dfs: error: ${error.message}; ${basename(request.command[0] ?? 'the command')} runs on without it, and its writes under it fail\n`);
  };
}

/**
 * Holds name's write lock while command runs, like flock(1): the command inherits the terminal,
 * and its exit status becomes ours (128 + signal number when it was killed). `dfs` commands in
 * it write under this lock (its token comes in the environment) instead of waiting for it.
 *
 * If the lock is lost meanwhile (said on stderr as soon as it is known), the release at the end
 * says so: that is reported again, and the exit status is not 0.
 */
async function runLocked(client: DfsClient, name: string, command: string[], timeoutMs: number): Promise<number> {
  const lock = await client.lock(name, { timeoutMs, onQueued: waitingNotice });
  let status: number;
  try {
    status = await runChild(command, { [INHERITED_LOCK_NAME]: name, [INHERITED_LOCK_TOKEN]: String(lock.token) });
  } catch (err) {
    await lock.release().catch(() => {});
    throw err;
  }
  try {
    await lock.release();
    return status;
  } catch (err) {
    const error = toDfsError(err);
    if (error.code !== 'LOCK_LOST') throw error;
    process.stderr.write(`dfs: error: ${error.message}; ${basename(command[0] ?? 'the command')} did not hold it all the time it ran\n`);
    return status === 0 ? 1 : status;
  }
}

/** Runs command with our stdio; its exit status, or 128 + the signal number that killed it. */
async function runChild(command: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const [file, ...args] = command as [string, ...string[]];
  const child = spawn(file, args, { stdio: 'inherit', env: { ...process.env, ...env } });
  // Ctrl-C reaches the command too (same process group): we wait for it, then unlock. A SIGTERM
  // sent to us alone is passed on, so that the command does not go on running unlocked.
  const waitForChild = () => {};
  const forwardTerm = () => child.kill('SIGTERM');
  process.on('SIGINT', waitForChild);
  process.on('SIGTERM', forwardTerm);
  try {
    // once() rejects with the spawn error (a command that cannot be found or run).
    const [code, signal] = (await once(child, 'exit').catch((err: NodeJS.ErrnoException) => {
      throw new DfsError('BAD_REQUEST', `cannot run ${file}: ${err.code === 'ENOENT' ? 'command not found' : err.message}`);
    })) as [number | null, NodeJS.Signals | null];
    return code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0);
  } finally {
    process.off('SIGINT', waitForChild);
    process.off('SIGTERM', forwardTerm);
  }
}
