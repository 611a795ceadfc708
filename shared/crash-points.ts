/**
 * Named crash points, for tests that kill a process at an exact step of a protocol instead of
 * racing a timer. `DFS_CRASH_AT=point` (or `point@name`, to crash only for that file name) makes
 * the process SIGKILL itself when it reaches the point: nothing after it runs, no cleanup, as
 * with kill -9. Unset, a crash point costs one comparison.
 *
 * The points are listed in docs/PROTOCOL.md with what each leaves on disk.
 */
import type { Logger } from './log.js';

export const CRASH_POINTS = [
  'write:before-stage',
  'write:after-stage',
  'write:after-primary-commit',
  'write:after-replica-commit',
  'write:before-ack',
  'replica:after-prepare',
  'replica:after-commit',
] as const;

export type CrashPoint = (typeof CRASH_POINTS)[number];

const armed = parse(process.env.DFS_CRASH_AT);

function parse(value: string | undefined): { point: string; name: string | null } | null {
  if (!value) return null;
  const at = value.indexOf('@');
  const point = at === -1 ? value : value.slice(0, at);
  if (!(CRASH_POINTS as readonly string[]).includes(point)) throw new Error(`DFS_CRASH_AT names no crash point: ${JSON.stringify(point)}; known: ${CRASH_POINTS.join(', ')}`);
  return { point, name: at === -1 ? null : value.slice(at + 1) };
}

/** Whether `point` is armed (for `name`, when given). */
export function crashArmed(point: CrashPoint, name?: string): boolean {
  return armed !== null && armed.point === point && (armed.name === null || name === undefined || armed.name === name);
}

/** Kills this process on the spot if `point` is armed for `name`. */
export function crashPoint(point: CrashPoint, name: string, log?: Logger): void {
  if (!crashArmed(point, name)) return;
  log?.warn('crash point reached; killing this process', { point, name });
  process.kill(process.pid, 'SIGKILL');
}
