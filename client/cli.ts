#!/usr/bin/env node
/**
 * `dfs`: the one-shot command line (`dfs cat notes.txt`), and with no command the interactive
 * editor (repl.ts). This module only parses arguments; the client library and the prompts are
 * imported once a command is known to be valid, so that `dfs --help` or a usage error costs
 * nothing and `dfs ls` pays only for what it uses.
 *
 * Exit status: 0 success, 1 an error (one line on stderr), 2 a usage error; `lock NAME -- CMD`
 * exits with CMD's status. Ctrl-C ends a command at once (see commands.ts).
 */
import { parseArgs } from 'node:util';

const DEFAULT_DIRECTORY_URL = 'wss://127.0.0.1:9090';
/** How long a command waits in line for a lock unless --timeout says otherwise. */
const DEFAULT_LOCK_TIMEOUT_MS = 60_000;
const MAX_LOCK_TIMEOUT_MS = 3_600_000; // the lock service's limit

const USAGE = `usage: dfs [options] [COMMAND [ARGS...]]

With no command, starts the interactive editor (REPL); type help there.

commands:
  create NAME            create an empty file
  write NAME             replace NAME's content with stdin (creates NAME if missing)
  append NAME            append stdin to NAME (creates NAME if missing)
  cat NAME               copy NAME's content to stdout, byte for byte
  put LOCAL [NAME]       upload a local file (NAME defaults to LOCAL's base name)
  get NAME [LOCAL]       download to a local file (default: NAME's base name here; - for stdout)
  ls [PREFIX]            list file names, one a line
  rm NAME                delete NAME
  stat NAME              version, size, sha256, primary and copies of NAME
  status                 file servers (up/down, in sync/behind, last heartbeat) and locks held
  lock NAME -- CMD [ARGS...]
                         run CMD while holding NAME's write lock (like flock); exits with CMD's status
  server drain ID        stop placing files on file server ID and move its copies to others
  server undrain ID      let ID take new files again
  server remove ID       forget ID (only once it holds no copies)
  rebalance              move primaries toward an even spread over the live file servers

options:
  --directory URL        the directory service (default $DFS_DIRECTORY, else ${DEFAULT_DIRECTORY_URL})
  --ca FILE              the cluster's CA certificate (default $DFS_CA; on the machine that
                         runs npm start, found by itself)
  --insecure             talk plain ws:// to a cluster started with --insecure
  --timeout MS           how long to wait in line for a lock (default ${DEFAULT_LOCK_TIMEOUT_MS})
  --name LABEL           how other clients see this one as a lock holder (default $DFS_CLIENT_NAME,
                         else user@host:pid)
  -h, --help             show this help

exit status: 0 ok, 1 error, 2 usage error; lock exits with CMD's status.`;

/** Argument names per command; a trailing '?' marks an optional one. */
const COMMANDS: Record<string, string[]> = {
  create: ['NAME'],
  write: ['NAME'],
  append: ['NAME'],
  cat: ['NAME'],
  put: ['LOCAL', 'NAME?'],
  get: ['NAME', 'LOCAL?'],
  ls: ['PREFIX?'],
  rm: ['NAME'],
  stat: ['NAME'],
  status: [],
  lock: ['NAME'],
  server: ['ACTION', 'ID'],
  rebalance: [],
};

class UsageError extends Error {}

interface Invocation {
  command: string | null;
  args: string[];
  /** What follows `--` (the command of `lock`). */
  afterDashes: string[];
  directoryUrl: string;
  ca: string | undefined;
  insecure: boolean;
  lockTimeoutMs: number;
  clientName: string | undefined;
  help: boolean;
}

function parseInvocation(argv: string[]): Invocation {
  const dashes = argv.indexOf('--');
  const head = dashes === -1 ? argv : argv.slice(0, dashes);
  const afterDashes = dashes === -1 ? [] : argv.slice(dashes + 1);
  const { values, positionals } = parseArgs({
    args: head,
    allowPositionals: true,
    strict: true,
    options: {
      directory: { type: 'string' },
      ca: { type: 'string' },
      insecure: { type: 'boolean' },
      timeout: { type: 'string' },
      name: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const [command = null, ...rest] = positionals;
  let lockTimeoutMs = DEFAULT_LOCK_TIMEOUT_MS;
  if (values.timeout !== undefined) {
    lockTimeoutMs = Number(values.timeout);
    if (!/^\d+$/.test(values.timeout) || lockTimeoutMs > MAX_LOCK_TIMEOUT_MS) throw new UsageError(`--timeout must be milliseconds from 0 to ${MAX_LOCK_TIMEOUT_MS}, not ${JSON.stringify(values.timeout)}`);
  }
  const invocation: Invocation = {
    command,
    args: command === 'lock' ? rest : [...rest, ...afterDashes],
    afterDashes: command === 'lock' ? afterDashes : [],
    directoryUrl: values.directory ?? process.env.DFS_DIRECTORY ?? (values.insecure ? DEFAULT_DIRECTORY_URL.replace('wss:', 'ws:') : DEFAULT_DIRECTORY_URL),
    ca: values.ca,
    insecure: values.insecure === true,
    lockTimeoutMs,
    clientName: values.name ?? process.env.DFS_CLIENT_NAME ?? undefined,
    help: values.help === true || command === 'help',
  };
  if (invocation.help || command === null) return invocation;

  const spec = COMMANDS[command];
  if (!spec) throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  const usage = [command, ...spec.map((a) => (a.endsWith('?') ? `[${a.slice(0, -1)}]` : a))].join(' ');
  const required = spec.filter((a) => !a.endsWith('?')).length;
  if (command === 'lock') {
    if (invocation.args.length !== 1 || dashes === -1 || afterDashes.length === 0) throw new UsageError('usage: dfs lock NAME -- COMMAND [ARGS...]');
  } else if (invocation.args.length < required || invocation.args.length > spec.length) {
    throw new UsageError(`usage: dfs ${command === 'server' ? 'server drain|undrain|remove ID' : usage}`);
  } else if (command === 'server' && !['drain', 'undrain', 'remove'].includes(invocation.args[0]!)) {
    throw new UsageError(`unknown server action ${JSON.stringify(invocation.args[0])}; usage: dfs server drain|undrain|remove ID`);
  }
  return invocation;
}

async function main(argv: string[]): Promise<number> {
  let invocation: Invocation;
  try {
    invocation = parseInvocation(argv);
  } catch (err) {
    // parseArgs's messages go on to explain `--`; the first sentence is the one that matters.
    const message = err instanceof UsageError ? err.message : (err as Error).message.split('. ')[0];
    process.stderr.write(`dfs: ${message}\nrun dfs --help for usage\n`);
    return 2;
  }
  if (invocation.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const session = { directoryUrl: invocation.directoryUrl, ca: invocation.ca, insecure: invocation.insecure, lockTimeoutMs: invocation.lockTimeoutMs, ...(invocation.clientName ? { clientName: invocation.clientName } : {}) };
  if (invocation.command === null) {
    const { runRepl } = await import('./repl.js');
    return runRepl(session);
  }
  const [{ runCommand }, { errorMessage }] = await Promise.all([import('./commands.js'), import('./session.js')]);
  try {
    return await runCommand({ name: invocation.command as Parameters<typeof runCommand>[0]['name'], args: invocation.args, command: invocation.afterDashes, session });
  } catch (err) {
    process.stderr.write(`dfs: error: ${errorMessage(err)}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
