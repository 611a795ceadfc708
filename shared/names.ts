import { DfsError } from './errors.js';

/** Longest file name accepted, in bytes of UTF-8. */
export const MAX_NAME_BYTES = 255;
const MAX_SEGMENT_BYTES = 128;

/**
 * Why a file name is unacceptable, or null when it is fine. Names are path-like
 * (`notes/today.txt`): segments of printable characters separated by single slashes. No
 * absolute paths, no `.` or `..` segments, no backslashes, no control characters, so that no
 * name can ever point outside a data folder, whatever the platform; and well-formed Unicode, so
 * that every name has exactly one UTF-8 form on disk.
 */
export function nameProblem(name: unknown): string | null {
  if (typeof name !== 'string') return 'a file name must be a string';
  if (name.length === 0) return 'a file name must not be empty';
  // A lone UTF-16 surrogate has no UTF-8 form: written to disk it would become U+FFFD, and two
  // different names would become one.
  if (!name.isWellFormed()) return 'a file name must be well-formed Unicode (it has an unpaired UTF-16 surrogate)';
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > MAX_NAME_BYTES) return `a file name must be at most ${MAX_NAME_BYTES} bytes (this one is ${bytes})`;
  if (name.startsWith('/')) return 'a file name must be relative (no leading "/")';
  if (name.endsWith('/')) return 'a file name must not end with "/"';
  if (name.includes('\\')) return 'a file name must not contain "\\"';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/u.test(name)) return 'a file name must not contain control characters';
  // Printable ASCII is always in normal form C; only other names pay for normalize().
  if (!/^[\x20-\x7e]*$/.test(name) && name.normalize('NFC') !== name) return 'a file name must be in Unicode normal form C';
  for (const segment of name.split('/')) {
    if (segment === '') return 'a file name must not contain "//"';
    if (segment === '.' || segment === '..') return 'a file name must not contain "." or ".." segments';
    if (Buffer.byteLength(segment, 'utf8') > MAX_SEGMENT_BYTES) return `each part of a file name must be at most ${MAX_SEGMENT_BYTES} bytes`;
    if (segment.trim() !== segment) return 'parts of a file name must not start or end with spaces';
  }
  return null;
}

export function assertValidName(name: unknown): asserts name is string {
  const problem = nameProblem(name);
  if (problem !== null) throw new DfsError('BAD_REQUEST', `bad file name ${JSON.stringify(name)}: ${problem}`);
}
