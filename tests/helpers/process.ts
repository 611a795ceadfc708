/**
 * Real service processes for integration tests: started on free ports in temp folders, watched
 * through their log lines, stopped by PID.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { waitFor } from './wait.js';

/** dist/ — the compiled project root, where service mains live. */
export const DIST = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function tempDir(prefix = 'dfs-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

const running = new Set<ServiceProcess>();

/**
 * The config folder (DFS_CONFIG_DIR) of every process these tests start, so that none reads or
 * writes the config folder of the person running them: one per test process, removed at exit.
 */
export const TEST_CONFIG_DIR = mkdtempSync(join(tmpdir(), 'dfs-config-'));
process.once('exit', () => rmSync(TEST_CONFIG_DIR, { recursive: true, force: true }));

export class ServiceProcess {
  readonly lines: string[] = [];
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    running.add(this);
    let partial = '';
    const onData = (chunk: Buffer) => {
      partial += chunk.toString('utf8');
      const parts = partial.split('\n');
      partial = parts.pop() ?? '';
      for (const line of parts) this.lines.push(line);
      if (process.env.DFS_TEST_VERBOSE) for (const line of parts) process.stderr.write(`[${name}] ${line}\n`);
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        running.delete(this);
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get exit(): { code: number | null; signal: NodeJS.Signals | null } | null {
    return this.exitInfo;
  }

  output(): string {
    return this.lines.join('\n');
  }

  async waitForLine(pattern: RegExp, timeoutMs = 15_000, from = 0): Promise<RegExpMatchArray> {
    return waitFor(
      () => {
        for (let i = from; i < this.lines.length; i++) {
          const match = this.lines[i]!.match(pattern);
          if (match) return match;
        }
        // Only after the lines: a process may print what is awaited and exit at once.
        if (this.exitInfo) throw new Error(`${this.name} exited (${JSON.stringify(this.exitInfo)}) before printing ${pattern}:\n${this.output()}`);
        return null;
      },
      { timeoutMs, what: `${this.name} to print ${pattern}` },
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n--- ${this.name} output ---\n${this.output()}`);
    });
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.exitInfo) process.kill(this.pid, sig);
  }

  waitForExit(timeoutMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return waitFor(() => this.exitInfo, { timeoutMs, what: `${this.name} to exit` });
  }

  /** SIGKILL, as a crash. */
  async kill9(): Promise<void> {
    if (this.exitInfo) return;
    if (this.child.signalCode === 'SIGSTOP' || this.stopped) process.kill(this.pid, 'SIGCONT');
    process.kill(this.pid, 'SIGKILL');
    await this.exited;
  }

  private stopped = false;

  freeze(): void {
    this.stopped = true;
    process.kill(this.pid, 'SIGSTOP');
  }

  thaw(): void {
    this.stopped = false;
    process.kill(this.pid, 'SIGCONT');
  }

  /** SIGTERM, then SIGKILL if it does not exit in time. */
  async stop(timeoutMs = 8000): Promise<void> {
    if (this.exitInfo) return;
    if (this.stopped) this.thaw();
    process.kill(this.pid, 'SIGTERM');
    const timer = setTimeout(() => {
      if (!this.exitInfo) process.kill(this.pid, 'SIGKILL');
    }, timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Starts `node dist/<script> ...args`. */
export function startNode(name: string, script: string, args: string[], env: NodeJS.ProcessEnv = {}): ServiceProcess {
  const child = spawn(process.execPath, [join(DIST, script), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, DFS_CONFIG_DIR: TEST_CONFIG_DIR, ...env },
  });
  return new ServiceProcess(name, child);
}

/** Kills, by PID, every process these helpers started and that is still running. */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop()));
}

// A test file that fails half way must not leave servers behind.
process.once('exit', () => {
  for (const p of running) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});
