/**
 * The interactive editor (`npm run client`, or `dfs` with no command). At a terminal, commands
 * are read with @inquirer/prompts' input prompt and the lines of a write with node:readline (so
 * that a pasted block arrives whole); when stdin is a pipe, commands and write bodies are read
 * line by line from it and only results are printed: no prompts, no colour.
 *
 * The loop never dies of a command: every failure is one `error: ...` line, and the next
 * command runs. Ctrl-C while waiting for a lock stops the wait (twice ends a command stuck
 * elsewhere); Ctrl-C at the prompt twice (or quit) leaves.
 */
import { createInterface, type Interface } from 'node:readline';
import type { DfsClient } from './dfs-client.js';
import { ReplCommands, type ReplIo } from './repl-commands.js';
import { isEndOfBody, parseReplLine } from './repl-syntax.js';
import { errorMessage, openSession, type SessionOptions } from './session.js';

const RULE = '--------------------------------';

/** Ctrl-C at the command prompt. */
class Interrupted extends Error {}

interface LineSource {
  /** The next command line; null at the end of input. Throws Interrupted on Ctrl-C. */
  nextCommand(): Promise<string | null>;
  /** The lines of a write up to `<end>`; null when cancelled or the input ended first. */
  readBody(): Promise<string[] | null>;
  close(): void;
}

/** Lines from a pipe or file: commands and write bodies come from the same stream. */
class StreamLines implements LineSource {
  private readonly queued: string[] = [];
  private ended = false;
  private wake: (() => void) | null = null;
  private readonly rl: Interface;

  constructor(input: NodeJS.ReadableStream) {
    this.rl = createInterface({ input, terminal: false, crlfDelay: Infinity });
    this.rl.on('line', (line) => {
      this.queued.push(line);
      this.wake?.();
    });
    this.rl.on('close', () => {
      this.ended = true;
      this.wake?.();
    });
  }

  private async next(): Promise<string | null> {
    while (this.queued.length === 0 && !this.ended) await new Promise<void>((resolve) => (this.wake = resolve));
    this.wake = null;
    return this.queued.shift() ?? null;
  }

  nextCommand(): Promise<string | null> {
    return this.next();
  }

  async readBody(): Promise<string[] | null> {
    const lines: string[] = [];
    for (;;) {
      const line = await this.next();
      if (line === null) return null; // a script cut short: write nothing rather than half
      if (isEndOfBody(line)) return lines;
      lines.push(line);
    }
  }

  close(): void {
    this.rl.close();
  }
}

/** A person at a terminal. */
class TerminalLines implements LineSource {
  constructor(private readonly colour: boolean) {}

  async nextCommand(): Promise<string | null> {
    const { input } = await import('@inquirer/prompts');
    const prompt = this.colour ? '\x1b[1mdfs\x1b[22m' : 'dfs';
    try {
      return await input({ message: '$', theme: { prefix: { idle: prompt, done: prompt }, style: { message: (text: string) => text, answer: (text: string) => text } } });
    } catch (err) {
      if (err instanceof Error && err.name === 'ExitPromptError') throw new Interrupted();
      throw err;
    }
  }

  /** Ctrl-D finishes the write like `<end>`; Ctrl-C cancels it. */
  readBody(): Promise<string[] | null> {
    return new Promise((resolve) => {
      const lines: string[] = [];
      const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: true, prompt: this.colour ? '\x1b[2m>\x1b[22m ' : '> ' });
      let result: string[] | null = lines;
      rl.on('line', (line) => {
        if (isEndOfBody(line)) return rl.close();
        lines.push(line);
        rl.prompt();
      });
      rl.prompt();
      rl.on('SIGINT', () => {
        result = null;
        process.stdout.write('^C\n');
        rl.close();
      });
      rl.on('close', () => resolve(result));
    });
  }

  close(): void {}
}

class Terminal implements ReplIo {
  private waitingShown = false;

  constructor(
    readonly interactive: boolean,
    private readonly colour: boolean,
    private readonly lines: LineSource,
  ) {}

  private paint(code: string, text: string): string {
    return this.colour ? `\x1b[${code}m${text}\x1b[0m` : text;
  }

  print(text: string): void {
    this.endWaiting();
    process.stdout.write(text + '\n');
  }

  rule(): void {
    this.print(this.paint('2', RULE));
  }

  error(message: string): void {
    this.endWaiting();
    process.stdout.write(this.paint('31', `error: ${message}`) + '\n');
  }

  waiting(message: string): void {
    // At a terminal the line is rewritten as the place in line changes; in a log, one line each.
    if (this.interactive) {
      // Cut to one row: a wrapped line could not be rewritten in place.
      const width = Math.max(20, (process.stdout.columns ?? 80) - 1);
      const shown = message.length > width ? message.slice(0, width - 1) + '…' : message;
      process.stdout.write(`\r\x1b[K${this.paint('33', shown)}`);
      this.waitingShown = true;
    } else {
      process.stdout.write(message + '\n');
    }
  }

  endWaiting(): void {
    if (!this.waitingShown) return;
    this.waitingShown = false;
    process.stdout.write('\r\x1b[K');
  }

  readBody(): Promise<string[] | null> {
    return this.lines.readBody();
  }
}

export async function runRepl(options: SessionOptions): Promise<number> {
  const interactive = process.stdin.isTTY === true && process.stdout.isTTY === true;
  const colour = interactive && !process.env.NO_COLOR;
  const lines: LineSource = interactive ? new TerminalLines(colour) : new StreamLines(process.stdin);
  const io = new Terminal(interactive, colour, lines);

  let client: DfsClient;
  try {
    // Said as soon as it is known, not only at the next write.
    client = await openSession(options, (name, error) => io.error(`${error.message}; writes under it fail until you unlock ${name}`));
  } catch (err) {
    io.error(errorMessage(err));
    lines.close();
    return 1;
  }
  if (interactive) {
    io.print(`Connected to ${options.directoryUrl} as ${client.clientName}.`);
    io.print('Type help for the commands (seed 003 style works too: <write> notes.txt ... <end>). quit leaves.');
  }

  const commands = new ReplCommands(client, io, options.lockTimeoutMs);
  let current: AbortController | null = null;
  let failures = 0;
  // Ctrl-C at a terminal stops the command's lock wait; a second one, or any in a script, ends
  // the process (its connections close, which frees its place in line and its locks).
  const onSigint = () => {
    if (interactive && current && !current.signal.aborted) return current.abort();
    process.stdout.write('\n');
    process.exit(130);
  };
  // A bug deep in a library must not end a session with locks and unsaved work: report, go on.
  const onStray = (err: unknown) => io.error(errorMessage(err));
  process.on('SIGINT', onSigint);
  process.on('unhandledRejection', onStray);

  let interruptedAtPrompt = false;
  try {
    for (;;) {
      let line: string | null;
      try {
        line = await lines.nextCommand();
      } catch (err) {
        if (!(err instanceof Interrupted)) throw err;
        if (interruptedAtPrompt) break;
        interruptedAtPrompt = true;
        io.print('(Press Ctrl-C again, or type quit, to leave)');
        continue;
      }
      interruptedAtPrompt = false;
      if (line === null) break;
      const parsed = parseReplLine(line);
      if (parsed.kind === 'empty') continue;
      if (parsed.kind === 'error') {
        failures++;
        io.error(parsed.message);
        continue;
      }
      if (parsed.command === 'quit') break;
      current = new AbortController();
      try {
        await commands.run(parsed.command, parsed.args, current.signal);
      } catch (err) {
        failures++;
        io.error(errorMessage(err));
      } finally {
        current = null;
      }
    }
  } finally {
    process.off('SIGINT', onSigint);
    process.off('unhandledRejection', onStray);
    lines.close();
    client.close(); // closing the session frees any lock still held
  }
  if (interactive) io.print('Bye.');
  // A script learns from the exit status whether every command worked.
  return !interactive && failures > 0 ? 1 : 0;
}
