/**
 * The REPL's command language, as a pure function from a typed line to a command. Two spellings
 * of the same commands are accepted: seed 003's bracketed words (`<write> notes.txt`,
 * `<list>`, `<quit>`) and plain words (`write notes.txt`, `ls`, `exit`). Arguments are split
 * like a shell's: quotes ("my notes.txt" or 'my notes.txt') keep spaces, a backslash escapes the
 * next character.
 */

export type ReplCommandName =
  | 'create'
  | 'write' // replace the file with the typed lines
  | 'append' // add the typed lines at the end; what seed 003's <write> does
  | 'read'
  | 'edit'
  | 'list'
  | 'rm'
  | 'stat'
  | 'status'
  | 'lock'
  | 'unlock'
  | 'help'
  | 'quit'
  | 'end';

export type ParsedLine =
  | { kind: 'empty' }
  | { kind: 'command'; command: ReplCommandName; args: string[] }
  | { kind: 'error'; message: string };

interface CommandSpec {
  command: ReplCommandName;
  args: string[]; // argument names; a trailing '?' marks an optional one
}

const SPECS: Record<ReplCommandName, CommandSpec> = {
  create: { command: 'create', args: ['NAME'] },
  write: { command: 'write', args: ['NAME'] },
  append: { command: 'append', args: ['NAME'] },
  read: { command: 'read', args: ['NAME'] },
  edit: { command: 'edit', args: ['NAME'] },
  list: { command: 'list', args: ['PREFIX?'] },
  rm: { command: 'rm', args: ['NAME'] },
  stat: { command: 'stat', args: ['NAME'] },
  status: { command: 'status', args: [] },
  lock: { command: 'lock', args: ['NAME'] },
  unlock: { command: 'unlock', args: ['NAME'] },
  help: { command: 'help', args: ['COMMAND?'] },
  quit: { command: 'quit', args: [] },
  end: { command: 'end', args: [] },
};

/** Plain words and their commands. */
const WORDS: Record<string, ReplCommandName> = {
  create: 'create',
  touch: 'create',
  write: 'write',
  append: 'append',
  read: 'read',
  cat: 'read',
  edit: 'edit',
  ls: 'list',
  list: 'list',
  rm: 'rm',
  delete: 'rm',
  stat: 'stat',
  status: 'status',
  lock: 'lock',
  unlock: 'unlock',
  help: 'help',
  '?': 'help',
  instructions: 'help',
  quit: 'quit',
  exit: 'quit',
};

/** Seed 003's bracketed words. `<write>` appends the typed lines, as the seed's client does. */
const SEED_WORDS: Record<string, ReplCommandName> = {
  ...WORDS,
  write: 'append',
  end: 'end',
};

/** The usage line of a command, as `help` shows it. */
export function usageOf(command: ReplCommandName): string {
  const args = SPECS[command].args.map((a) => (a.endsWith('?') ? `[${a.slice(0, -1)}]` : a));
  return [command, ...args].join(' ');
}

/** The line with its word and arguments split shell-style, or an error for an unclosed quote. */
export function splitWords(line: string): string[] | { error: string } {
  const words: string[] = [];
  let word = '';
  let inWord = false;
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (quote) {
      if (ch === quote) quote = null;
      else if (ch === '\\' && quote === '"' && i + 1 < line.length) word += line[++i];
      else word += ch;
    } else if (ch === '"' || ch === "'") {
      quote = ch;
      inWord = true;
    } else if (ch === '\\' && i + 1 < line.length) {
      word += line[++i];
      inWord = true;
    } else if (/\s/.test(ch)) {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
    } else {
      word += ch;
      inWord = true;
    }
  }
  if (quote) return { error: `unclosed ${quote} quote` };
  if (inWord) words.push(word);
  return words;
}

export function parseReplLine(line: string): ParsedLine {
  const trimmed = line.trim();
  if (trimmed === '' || trimmed.startsWith('#')) return { kind: 'empty' };

  // `<word> args` (seed style; a space after the bracket is optional) or `word args`.
  const seed = /^<\s*([^<>\s]+)\s*>(.*)$/s.exec(trimmed);
  const head = seed ? seed[1]!.toLowerCase() : (trimmed.split(/\s+/, 1)[0] ?? '').toLowerCase();
  const rest = seed ? seed[2]! : trimmed.slice(head.length);
  const command = seed ? SEED_WORDS[head] : WORDS[head];
  if (!command) {
    const shown = seed ? `<${head}>` : head;
    return { kind: 'error', message: `unknown command ${JSON.stringify(shown)}; type help for the list of commands` };
  }

  const words = splitWords(rest);
  if (!Array.isArray(words)) return { kind: 'error', message: `${words.error} in ${JSON.stringify(trimmed)}` };
  const spec = SPECS[command];
  const required = spec.args.filter((a) => !a.endsWith('?')).length;
  if (words.length < required || words.length > spec.args.length) {
    return { kind: 'error', message: `usage: ${usageOf(command)}` };
  }
  return { kind: 'command', command, args: words };
}

/** Whether a body line of a write ends the write: `<end>`, alone on its line. */
export function isEndOfBody(line: string): boolean {
  return /^<\s*end\s*>$/i.test(line.trim());
}

export const HELP_TEXT = `Commands (seed 003's bracketed form works too: <create>, <write>, <read>, <list>, <instructions>, <quit>):

  create NAME          create an empty file
  <write> NAME         type lines, then <end> alone on a line: they are APPENDED to NAME
  append NAME          the same as <write> NAME
  write NAME           type lines, then <end>: they REPLACE the content of NAME
  read NAME            show NAME and whether it came from this client's cache (alias: cat)
  edit NAME            lock NAME, open it in $VISUAL / $EDITOR, save it when the editor closes
  list [PREFIX]        list file names (alias: ls)
  rm NAME              delete NAME
  stat NAME            version, size, checksum and copies of NAME
  status               the file servers (up or down, in sync or behind) and the locks held
  lock NAME            take NAME's write lock and keep it until unlock NAME
  unlock NAME          release it
  help                 this text (alias: instructions)
  quit                 leave (alias: exit); locks still held are released

A write to a file that does not exist creates it first. Writes take the file's lock (waiting
in line behind other clients) unless you hold it already; Ctrl-C stops waiting.
Names with spaces go in quotes: read "my notes.txt".`;
