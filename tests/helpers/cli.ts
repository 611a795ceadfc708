/**
 * Running the `dfs` command line in tests: to completion with given stdin (stdout kept as bytes,
 * for byte-exact checks), or as a long-lived process with a pipe to its stdin (a REPL being fed
 * a session), watched through its output lines and stopped by PID.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { join } from 'node:path';
import { DIST, ServiceProcess, TEST_CONFIG_DIR } from './process.js';

export const CLI = join(DIST, 'client', 'cli.js');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

export function runCli(args: string[], options: { stdin?: Buffer | string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CliResult> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, DFS_CONFIG_DIR: TEST_CONFIG_DIR, ...options.env } });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`dfs ${args.join(' ')} did not finish within ${timeoutMs} ms; stderr: ${Buffer.concat(stderr).toString()}`));
    }, timeoutMs);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(stdout), stderr: Buffer.concat(stderr).toString('utf8') });
    });
    child.stdin.on('error', () => {}); // a command that does not read stdin may close it first
    child.stdin.end(options.stdin ?? '');
  });
}

/** A `dfs` process with a pipe to its stdin (a REPL being fed a session). */
export class CliProcess extends ServiceProcess {
  constructor(name: string, child: ChildProcessWithoutNullStreams) {
    super(name, child);
    child.stdin.on('error', () => {}); // it may exit before reading everything sent
  }

  send(text: string): void {
    (this.child as ChildProcessWithoutNullStreams).stdin.write(text);
  }

  /** Closes its stdin: the end of input. */
  end(): void {
    (this.child as ChildProcessWithoutNullStreams).stdin.end();
  }
}

/** Starts `dfs ...args`; its stdout and stderr lines are collected. */
export function startCli(name: string, args: string[], env: NodeJS.ProcessEnv = {}): CliProcess {
  return new CliProcess(name, spawn(process.execPath, [CLI, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, DFS_CONFIG_DIR: TEST_CONFIG_DIR, ...env } }));
}

/** Asserts that the pieces occur in text in this order; the error shows the text. */
export function assertInOrder(text: string, pieces: Array<string | RegExp>): void {
  let from = 0;
  for (const piece of pieces) {
    const rest = text.slice(from);
    const match = typeof piece === 'string' ? { index: rest.indexOf(piece), length: piece.length } : (() => {
      const m = piece.exec(rest);
      return { index: m ? m.index : -1, length: m ? m[0].length : 0 };
    })();
    if (match.index === -1) throw new Error(`expected ${String(piece)} after position ${from} in:\n${text}`);
    from += match.index + match.length;
  }
}
