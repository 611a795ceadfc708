/** The REPL's command parser and the text helpers: pure functions, no cluster. */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { isEndOfBody, parseReplLine, splitWords } from '../client/repl-syntax.js';
import { formatAge, formatSize, lockWaitMessage, ordinal, table } from '../client/format.js';

const test = suite('repl-syntax');

const command = (c: string, ...args: string[]) => ({ kind: 'command', command: c, args });

test("seed 003's bracketed commands", () => {
  assert.equal(parseReplLine('<write> somefilename'), command('append', 'somefilename'));
  assert.equal(parseReplLine('<read> somefilename'), command('read', 'somefilename'));
  assert.equal(parseReplLine('<create> a.txt'), command('create', 'a.txt'));
  assert.equal(parseReplLine('<list>'), command('list'));
  assert.equal(parseReplLine('<instructions>'), command('help'));
  assert.equal(parseReplLine('<quit>'), command('quit'));
  assert.equal(parseReplLine('<end>'), command('end'));
  assert.equal(parseReplLine('  <READ>somefile  '), command('read', 'somefile'));
  assert.equal(parseReplLine('< write > x'), command('append', 'x'));
});

test('plain words and aliases', () => {
  assert.equal(parseReplLine('write notes.txt'), command('write', 'notes.txt'));
  assert.equal(parseReplLine('append notes.txt'), command('append', 'notes.txt'));
  assert.equal(parseReplLine('cat notes.txt'), command('read', 'notes.txt'));
  assert.equal(parseReplLine('ls'), command('list'));
  assert.equal(parseReplLine('ls docs/'), command('list', 'docs/'));
  assert.equal(parseReplLine('EXIT'), command('quit'));
  assert.equal(parseReplLine('rm a'), command('rm', 'a'));
  assert.equal(parseReplLine('edit a'), command('edit', 'a'));
  assert.equal(parseReplLine('lock a'), command('lock', 'a'));
  assert.equal(parseReplLine('status'), command('status'));
});

test('quoting keeps spaces; blank lines and comments are nothing', () => {
  assert.equal(parseReplLine('read "my notes.txt"'), command('read', 'my notes.txt'));
  assert.equal(parseReplLine("read 'it''s'"), command('read', 'its'));
  assert.equal(parseReplLine('read my\\ notes.txt'), command('read', 'my notes.txt'));
  assert.equal(parseReplLine('read "say \\"hi\\""'), command('read', 'say "hi"'));
  assert.equal(splitWords('  a  "b c"  d'), ['a', 'b c', 'd']);
  assert.equal(splitWords('""'), ['']);
  assert.equal(parseReplLine(''), { kind: 'empty' });
  assert.equal(parseReplLine('   '), { kind: 'empty' });
  assert.equal(parseReplLine('# a comment'), { kind: 'empty' });
});

test('errors: unknown commands, wrong argument counts, unclosed quotes', () => {
  assert.equal(parseReplLine('frob x'), { kind: 'error', message: 'unknown command "frob"; type help for the list of commands' });
  assert.equal(parseReplLine('<frob> x'), { kind: 'error', message: 'unknown command "<frob>"; type help for the list of commands' });
  assert.equal(parseReplLine('read'), { kind: 'error', message: 'usage: read NAME' });
  assert.equal(parseReplLine('read a b'), { kind: 'error', message: 'usage: read NAME' });
  assert.equal(parseReplLine('ls a b'), { kind: 'error', message: 'usage: list [PREFIX]' });
  assert.equal(parseReplLine('status now'), { kind: 'error', message: 'usage: status' });
  assert.equal(parseReplLine('read "open'), { kind: 'error', message: 'unclosed " quote in "read \\"open"' });
});

test('<end> ends a write body, alone on its line', () => {
  assert.ok(isEndOfBody('<end>'));
  assert.ok(isEndOfBody('  <END> '));
  assert.not.ok(isEndOfBody('the <end> of it'));
  assert.not.ok(isEndOfBody('end'));
});

test('ordinals, sizes, ages, tables, lock-wait lines', () => {
  assert.equal([1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111].map(ordinal), ['1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd', '23rd', '101st', '111th']);
  assert.is(formatSize(0), '0 B');
  assert.is(formatSize(1023), '1023 B');
  assert.is(formatSize(1536), '1.5 KiB');
  assert.is(formatSize(3 * 1024 * 1024), '3.0 MiB');
  assert.is(formatAge(null, 1000), 'never');
  assert.is(formatAge(600, 1000), '0.4s ago');
  assert.is(formatAge(0, 300_000), '5m ago');
  assert.is(table([['A', 'BB'], ['ccc', 'd']]), 'A    BB\nccc  d');
  assert.is(lockWaitMessage({ name: 'notes.txt', holder: 'alice@host:123', position: 3 }), 'lock on notes.txt is held by alice@host:123; waiting, 3rd in line');
});

test.run();
