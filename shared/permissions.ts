/**
 * Who may read and write a file: every file has an owner and a Unix-like mode, so that a file
 * can be kept private (rw-------) or left for everyone to read (rw-r--r--, the default).
 *
 * A mode holds only r and w bits for user, group and other (0..0o777 with no execute bit): dfs
 * files are not programs, x has no meaning, and setuid, setgid and sticky bits even less. Admins
 * may do everything, like root. The owner gets the user bits; everyone else the other bits.
 *
 * Pure: no I/O, so the directory, the client and the CLI all decide and describe alike.
 */
import { z } from 'zod';
import { DfsError } from './errors.js';

/** r/w bits for user, group and other: 0..0o777 with no execute bit. */
export type Mode = number;
export type Access = 'read' | 'write';

/** rw-r--r--: the owner writes, everyone reads. Also what files with no recorded mode have. */
export const DEFAULT_MODE: Mode = 0o644;
/** rw-------: only the owner (and admins). */
export const PRIVATE_MODE: Mode = 0o600;

const EXECUTE_BITS = 0o111;
const NO_X = 'dfs files are not programs: x has no meaning';

export interface Who {
  name: string;
  admin: boolean;
}

export interface Owned {
  owner: string;
  mode: Mode;
}

/** Why `mode` is not a mode, or null when it is one. */
export function modeProblem(mode: unknown): string | null {
  if (typeof mode !== 'number' || !Number.isInteger(mode) || mode < 0 || mode > 0o777) return 'a mode is an integer from 0 to 0o777';
  if ((mode & EXECUTE_BITS) !== 0) return `a mode has no execute bits (${NO_X}); ${octal(mode & ~EXECUTE_BITS)} is probably meant`;
  return null;
}

/**
 * Why `owner` cannot be an owner's name, or null when it can. Owners are user names: not empty,
 * at most 128 bytes of well-formed UTF-8, no control characters, no spaces at either end (so that
 * one owner is never shown as another, and every name is one whole line in a CSV file).
 */
export function ownerProblem(owner: unknown): string | null {
  if (typeof owner !== 'string' || owner.length === 0) return 'an owner is a non-empty string';
  if (!owner.isWellFormed()) return 'an owner must be well-formed Unicode';
  if (Buffer.byteLength(owner, 'utf8') > 128) return 'an owner is at most 128 bytes';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/u.test(owner)) return 'an owner must not contain control characters';
  if (owner.trim() !== owner) return 'an owner must not start or end with spaces';
  return null;
}

/** A mode as on the wire: an integer 0..0o777 without execute bits. */
export const modeSchema = z
  .number()
  .int()
  .min(0)
  .max(0o777)
  .refine((mode) => (mode & EXECUTE_BITS) === 0, `a mode has no execute bits (${NO_X})`);

/** 0o640 → 'rw-r-----'. Execute bits, which no valid mode has, show as x. */
export function formatMode(mode: Mode): string {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new DfsError('BAD_REQUEST', `${mode} is not a mode (0 to 0o777)`);
  let text = '';
  for (const shift of [6, 3, 0]) {
    const bits = mode >> shift;
    text += (bits & 4 ? 'r' : '-') + (bits & 2 ? 'w' : '-') + (bits & 1 ? 'x' : '-');
  }
  return text;
}

/** 0o644 → '644'. */
function octal(mode: Mode): string {
  return mode.toString(8).padStart(3, '0');
}

const WHO_BITS: Record<'u' | 'g' | 'o', number> = { u: 0o700, g: 0o070, o: 0o007 };
const PERM_BITS: Record<'r' | 'w', number> = { r: 0o444, w: 0o222 };

/**
 * The mode that `text` asks for, given the file's `current` one. Accepts:
 * - octal: '644', '0600';
 * - the 9-character form: 'rw-r-----';
 * - chmod clauses as in coreutils, joined by commas: `[ugoa]*` then one or more `[+-=][rw]*`
 *   ('u+w', 'go-rw', 'a=r', 'o=', 'u=rw,go=r'). No letter means a ('+r' is 'a+r'; there is no
 *   umask to respect). Copying another class's bits ('g=u') is not supported.
 * Anything else, execute, setuid, setgid and sticky bits included, is BAD_REQUEST.
 */
export function parseMode(text: string, current: Mode): Mode {
  const bad = (why: string) => new DfsError('BAD_REQUEST', `bad mode ${JSON.stringify(text)}: ${why}`);
  if (typeof text !== 'string' || text === '') throw bad('expected octal (644), rw-r--r-- or chmod clauses (u+w, go-rw, a=r)');

  if (/^\d+$/.test(text)) {
    if (!/^[0-7]+$/.test(text)) throw bad('octal digits are 0 to 7');
    if (/^[1-7][0-7]{3}$/.test(text)) throw bad(`setuid, setgid and sticky bits are not supported (${NO_X}, nor has set-id); ${octal(parseInt(text.slice(1), 8) & ~EXECUTE_BITS)} is probably meant`);
    if (!/^0?[0-7]{3}$/.test(text)) throw bad('octal modes have 3 digits (644), or 4 with a leading 0 (0644)');
    const mode = parseInt(text, 8);
    if ((mode & EXECUTE_BITS) !== 0) throw bad(`it sets execute bits (${NO_X}); ${octal(mode & ~EXECUTE_BITS)} is probably meant`);
    return mode;
  }

  if (/^[r-][w-][xsStT-][r-][w-][xsStT-][r-][w-][xsStT-]$/.test(text)) {
    if (/[xsStT]/.test(text)) throw bad(`execute, setuid, setgid and sticky bits are not supported (${NO_X}); ${text.replace(/[xsStT]/g, '-')} is probably meant`);
    let mode = 0;
    for (let i = 0; i < 9; i++) if (text[i] !== '-') mode |= 1 << (8 - i);
    return mode;
  }

  if (modeProblem(current) !== null) throw new DfsError('INTERNAL', `the current mode ${current} is not a mode`);
  let mode = current;
  for (const clause of text.split(',')) {
    const match = /^([ugoa]*)((?:[-+=][a-zA-Z]*)+)$/.exec(clause);
    if (!match) throw bad(`${JSON.stringify(clause)} is not a clause like u+w, go-rw, a=r or o=`);
    const [, whoText, actions] = match as unknown as [string, string, string];
    let who = 0;
    for (const letter of whoText === '' ? 'a' : whoText) who |= letter === 'a' ? 0o777 : WHO_BITS[letter as 'u' | 'g' | 'o'];
    for (const [, op, perms] of actions.matchAll(/([-+=])([a-zA-Z]*)/g) as Iterable<[string, string, string]>) {
      let bits = 0;
      for (const perm of perms) {
        if (perm === 'x' || perm === 'X') throw bad(`x is not supported (${NO_X})`);
        if (perm === 's' || perm === 't') throw bad('setuid, setgid and sticky bits are not supported');
        if (perm === 'u' || perm === 'g' || perm === 'o') throw bad(`copying another class's bits (${clause}) is not supported; name the bits (u=rw)`);
        if (perm !== 'r' && perm !== 'w') throw bad(`${JSON.stringify(perm)} is not a permission (r or w)`);
        bits |= PERM_BITS[perm];
      }
      bits &= who;
      if (op === '+') mode |= bits;
      else if (op === '-') mode &= ~bits;
      else mode = (mode & ~who) | bits;
    }
  }
  return mode;
}

/**
 * Whether `who` may `access` `file`. Admins may do everything. The owner gets the user bits,
 * everyone else the other bits. There are no groups yet: the group bits are kept and shown, so
 * that modes read as people expect, but they apply to nobody (not even the owner: a user in
 * the owner's group would be the owner or an other).
 */
export function may(who: Who, file: Owned, access: Access): boolean {
  if (who.admin) return true;
  const bits = who.name === file.owner ? file.mode >> 6 : file.mode;
  return (bits & (access === 'read' ? 4 : 2)) !== 0;
}

/** Why `may` said no, for a person: "bob may not write alice's notes.txt (rw-r--r--)". */
export function explainDenied(who: Who, file: Owned, name: string, access: Access): string {
  const whose = who.name === file.owner ? 'their own' : `${file.owner}'s`;
  return `${who.name} may not ${access} ${whose} ${name} (${formatMode(file.mode)})`;
}
