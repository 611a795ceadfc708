/**
 * Text for people: tables, ordinals, sizes, ages, and the status and stat views shared by the
 * one-shot CLI and the REPL. Pure functions of their inputs (the clock is a parameter), so that
 * they are tested without a cluster.
 */
import type { ClusterStatus, StatOutcome } from './dfs-client.js';
import type { QueuedEvent } from '../shared/protocol.js';
import { ordinal } from '../shared/text.js';

export { ordinal };

/** Bytes in binary units: 0 B, 999 B, 1.5 KiB, 12.0 MiB. */
export function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

/** How long ago a moment was, coarsely: "0.4s ago", "12s ago", "5m ago", "2h ago". */
export function formatAge(at: number | null, now: number): string {
  if (at === null) return 'never';
  const ms = Math.max(0, now - at);
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)}s ago`;
  if (ms < 120_000) return `${Math.round(ms / 1000)}s ago`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)}m ago`;
  return `${Math.round(ms / 3_600_000)}h ago`;
}

/** Left-aligned columns separated by two spaces; the first row is the header. */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n');
}

/** "lock on notes.txt is held by alice@host:123; waiting, 3rd in line" */
export function lockWaitMessage(event: QueuedEvent): string {
  return `lock on ${event.name} is held by ${event.holder}; waiting, ${ordinal(event.position)} in line`;
}

export function renderStatus(status: ClusterStatus, now = Date.now()): string {
  const lines: string[] = [];
  const up = status.servers.filter((s) => s.state === 'up').length;
  lines.push(`${status.files} file${status.files === 1 ? '' : 's'}, ${status.replication} copies each; file servers: ${up} of ${status.servers.length} up`);
  if (status.rejectedRows) {
    lines.push(`the directory set aside ${status.rejectedRows} row${status.rejectedRows === 1 ? '' : 's'} of its file table at start (see file_table.rejected.csv in its data folder)`);
  }
  if (status.underReplicated) {
    lines.push(`${status.underReplicated} file${status.underReplicated === 1 ? ' has' : 's have'} fewer than ${status.replication} copies up and in sync`);
  }
  if (status.lastFailover) {
    const f = status.lastFailover;
    const stuck = f.stuck > 0 ? `; ${f.stuck} could not be (no in-sync replica)` : '';
    lines.push(`last failover: ${f.server} was silent; ${f.promoted} of its ${f.files} file${f.files === 1 ? '' : 's'} got a new primary ${formatAge(f.at, now)} (in ${f.ms} ms)${stuck}`);
  }
  const rr = status.rereplication;
  if (rr && (rr.copying > 0 || rr.lastRound)) {
    const last = rr.lastRound ? `; last round: ${rr.lastRound.server} (${rr.lastRound.reason}) ${formatAge(rr.lastRound.at, now)}, ${rr.lastRound.newCopies} new copies${rr.lastRound.noTarget ? `, ${rr.lastRound.noTarget} files with no server to take one` : ''}` : '';
    lines.push(`re-replication: ${rr.copying} cop${rr.copying === 1 ? 'y' : 'ies'} being made, ${rr.copied} made${last}`);
  }
  if (status.servers.length > 0) {
    lines.push('');
    lines.push(
      table([
        ['SERVER', 'URL', 'STATE', 'SYNC', 'LAST HEARTBEAT', 'FILES', 'PRIMARY FOR', 'BEHIND'],
        ...status.servers.map((s) => [s.id, s.url, s.draining ? `${s.state}, draining` : s.state, s.sync, formatAge(s.lastHeartbeat, now), String(s.files), String(s.primaries), String(s.behindFiles)]),
      ]),
    );
  }
  lines.push('');
  if (status.locks === null) {
    lines.push(`locks: the lock service at ${status.lockUrl} cannot be reached`);
  } else if (status.locks.length === 0) {
    lines.push(`locks: none held (lock service ${status.lockUrl})`);
  } else {
    lines.push(`locks (lock service ${status.lockUrl}):`);
    lines.push(
      table([
        ['FILE', 'HOLDER', 'TOKEN', 'SINCE', 'WAITING'],
        ...status.locks.map((l) => [l.name, l.holder, String(l.token), formatAge(l.since, now), waitersCell(l.waiters, l.waiting)]),
      ]),
    );
  }
  return lines.join('\n');
}

/** "alice, bob", or "alice, bob and 98 more" when the service listed only the first waiters. */
function waitersCell(waiters: string[], waiting: number): string {
  if (waiting === 0) return '-';
  const more = waiting - waiters.length;
  return more > 0 ? `${waiters.join(', ')}${waiters.length > 0 ? ' and ' : ''}${more} more` : waiters.join(', ');
}

export function renderStat(stat: StatOutcome): string {
  const copies = stat.copies.map((c) => `${c.id} (${c.role}, ${c.up ? 'up' : 'down'}${c.up && !c.inSync ? ', behind' : ''})`).join(', ');
  return table([
    ['name', stat.name],
    ['version', String(stat.version)],
    ['size', `${stat.size} bytes${stat.size >= 1024 ? ` (${formatSize(stat.size)})` : ''}`],
    ['modified', stat.mtime > 0 ? new Date(stat.mtime).toISOString() : '-'],
    ['sha256', stat.sha256],
    ['primary', stat.primary],
    ['copies', copies],
  ]);
}

/** True when content is printable as text: valid UTF-8 with no NUL bytes. */
export function isText(content: Buffer): boolean {
  if (content.includes(0)) return false;
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(content);
    return true;
  } catch {
    return false;
  }
}
