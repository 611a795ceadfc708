/**
 * File-server membership and routing, with no sockets and no disk: who is registered, who is up,
 * who is still catching up, which copies are known to have missed writes, where a new file goes
 * and which copy serves the next read. Time comes from `now()`, so tests need no sleeps.
 *
 * Rules (docs/PROTOCOL.md, "Directory service"):
 * - A server is up from `register` until `downAfterMs` pass without a heartbeat; then it is down
 *   and stays down until it registers again (a heartbeat cannot revive it: it may have missed
 *   writes while it was away, so it must go through a catch-up first).
 * - A server is `syncing` from `register` until it reports `synced`.
 * - A copy is "behind" when its primary reported that it missed a write. Each mark gets the next
 *   mark sequence number; `synced {upTo}` clears the server's marks numbered up to `upTo`, so a
 *   mark made while the catch-up was running survives it, and `caughtUp {upTo, names}` does the
 *   same for the named copies only (a partial catch-up of one heartbeat's page).
 */
import { DfsError } from '../../shared/errors.js';
import { PAGE_BYTES, jsonBytes } from '../../shared/pages.js';
import type { CopyRole } from '../../shared/protocol.js';

export const DEFAULT_DOWN_AFTER_MS = 3000;
export const DEFAULT_REPLICATION = 3;

export interface ClusterOptions {
  replication?: number;
  downAfterMs?: number;
  now?: () => number;
  /** This run of the directory (see RegisterResult.boot); tests may leave it out. */
  boot?: string;
}

interface Member {
  id: string;
  url: string;
  registeredAt: number;
  lastHeartbeat: number | null;
  down: boolean;
  syncing: boolean;
}

/** The copies of one file, by server id. */
export interface CopySet {
  primary: string;
  replicas: readonly string[];
}

export interface ServerLoad {
  files: number;
  primaries: number;
}

export interface Registration {
  markSeq: number;
  /** What the directory knew of this server before: nothing, up, or down. */
  before: 'new' | 'up' | 'down';
  previousUrl: string | undefined;
}

export interface DownServer {
  id: string;
  silentMs: number;
}


export interface MemberView {
  id: string;
  url: string;
  up: boolean;
  syncing: boolean;
  lastHeartbeat: number | null;
  behindFiles: number;
}

export class Cluster {
  readonly replication: number;
  readonly downAfterMs: number;
  readonly boot: string;
  private readonly startedAt: number;
  private readonly now: () => number;
  private readonly members = new Map<string, Member>();
  /** server id → file name → mark sequence number. */
  private readonly marks = new Map<string, Map<string, number>>();
  private markSeq = 0;
  /** file name → index of the replica to try first for the next read. */
  private readonly readCursor = new Map<string, number>();

  constructor(options: ClusterOptions = {}) {
    this.replication = options.replication ?? DEFAULT_REPLICATION;
    this.boot = options.boot ?? '';
    this.downAfterMs = options.downAfterMs ?? DEFAULT_DOWN_AFTER_MS;
    this.now = options.now ?? Date.now;
    this.startedAt = this.now();
    if (!Number.isInteger(this.replication) || this.replication < 1) throw new RangeError('replication must be a whole number of at least 1');
    if (!(this.downAfterMs > 0)) throw new RangeError('downAfterMs must be positive');
  }

  /** How often a file server should send heartbeats: a few per down-after period. */
  get heartbeatMs(): number {
    return Math.max(50, Math.floor(this.downAfterMs / 3));
  }

  get currentMarkSeq(): number {
    return this.markSeq;
  }

  // ------------------------------------------------------------ membership

  register(id: string, url: string): Registration {
    for (const other of this.members.values()) {
      if (other.id !== id && other.url === url && this.isUp(other.id)) {
        throw new DfsError('EXISTS', `${url} is already registered by server ${other.id}, which is up; give each file server its own address`);
      }
    }
    const previous = this.members.get(id);
    const before = previous === undefined ? 'new' : this.isUp(id) ? 'up' : 'down';
    this.members.set(id, { id, url, registeredAt: this.now(), lastHeartbeat: null, down: false, syncing: true });
    return { markSeq: this.markSeq, before, previousUrl: previous?.url };
  }

  /**
   * Records a heartbeat; NOT_FOUND when the server must register (again) first. Answers with a
   * page (at most maxBytes of JSON) of the server's copies marked behind, oldest mark first.
   */
  heartbeat(id: string, maxBytes = PAGE_BYTES): { behind: string[]; more: boolean; markSeq: number; boot: string } {
    this.requireUp(id);
    const member = this.members.get(id)!;
    member.lastHeartbeat = this.now();
    const behind: string[] = [];
    let bytes = 0;
    let more = false;
    for (const name of this.marks.get(id)?.keys() ?? []) {
      bytes += jsonBytes(name);
      if (behind.length > 0 && bytes > maxBytes) {
        more = true;
        break;
      }
      behind.push(name);
    }
    return { behind, more, markSeq: this.markSeq, boot: this.boot };
  }

  /** Marks down every server silent for longer than downAfterMs; returns those newly down. */
  sweep(): DownServer[] {
    const now = this.now();
    const newlyDown: DownServer[] = [];
    for (const member of this.members.values()) {
      if (member.down) continue;
      const silentMs = now - lastSign(member);
      if (silentMs > this.downAfterMs) {
        member.down = true;
        newlyDown.push({ id: member.id, silentMs });
      }
    }
    return newlyDown;
  }

  /** How long a registered server has been silent (0 while it is heard from), or null if unknown. */
  silentMs(id: string): number | null {
    const member = this.members.get(id);
    return member === undefined ? null : Math.max(0, this.now() - lastSign(member));
  }

  /**
   * How long a server has been silent, for failover and re-replication: 0 while it is up, and
   * for one that has not registered since this directory started, the time since the start.
   */
  silence(id: string): number {
    const member = this.members.get(id);
    if (member === undefined) return this.now() - this.startedAt;
    return this.isUp(id) ? 0 : this.now() - lastSign(member);
  }

  /** Forgets a server (an operator removed it) and its marks; returns the names it had marked. */
  removeMember(id: string): string[] {
    this.members.delete(id);
    const names = [...(this.marks.get(id)?.keys() ?? [])];
    this.marks.delete(id);
    return names;
  }

  isRegistered(id: string): boolean {
    return this.members.has(id);
  }

  /** Up: registered, not marked down, and heard from within downAfterMs (even before the next sweep). */
  isUp(id: string): boolean {
    const member = this.members.get(id);
    return member !== undefined && !member.down && this.now() - lastSign(member) <= this.downAfterMs;
  }

  isSyncing(id: string): boolean {
    return this.members.get(id)?.syncing ?? false;
  }

  /** The registered URL of a server, if it registered since this directory started. */
  urlOf(id: string): string | undefined {
    return this.members.get(id)?.url;
  }

  memberIds(): IterableIterator<string> {
    return this.members.keys();
  }

  view(id: string): MemberView | undefined {
    const member = this.members.get(id);
    if (!member) return undefined;
    return {
      id,
      url: member.url,
      up: this.isUp(id),
      syncing: member.syncing,
      lastHeartbeat: member.lastHeartbeat,
      behindFiles: this.marks.get(id)?.size ?? 0,
    };
  }

  private requireUp(id: string): void {
    if (!this.isUp(id)) {
      const member = this.members.get(id);
      if (member) member.down = true;
      throw new DfsError('NOT_FOUND', `server ${id} is not registered; register again`);
    }
  }

  // ------------------------------------------------------------ behind marks

  /** Records that the copy of `name` on server `id` missed a write. */
  markBehind(name: string, id: string): { seq: number; fresh: boolean } {
    let forServer = this.marks.get(id);
    if (!forServer) this.marks.set(id, (forServer = new Map()));
    const fresh = !forServer.has(name);
    const seq = ++this.markSeq;
    // Deleting first moves the name to the end, so heartbeat lists stay in mark order.
    forServer.delete(name);
    forServer.set(name, seq);
    return { seq, fresh };
  }

  /** Marks loaded from disk at start, in the order they were made. */
  loadMarks(copies: Iterable<{ server: string; name: string }>): void {
    for (const { server, name } of copies) this.markBehind(name, server);
  }

  /** Every mark in force, oldest first per server. */
  *allMarks(): IterableIterator<{ server: string; name: string }> {
    for (const [server, names] of this.marks) for (const name of names.keys()) yield { server, name };
  }

  /**
   * Renews the marks that exist on these copies (a new sequence number, so that the server's
   * `synced` does not clear them) and makes no new ones: a server that could not check a copy
   * (its primary is unreachable) keeps what is known of it. Returns how many were renewed.
   */
  renewMarks(id: string, names: Iterable<string>): number {
    const forServer = this.marks.get(id);
    if (!forServer) return 0;
    let renewed = 0;
    for (const name of names) {
      if (!forServer.has(name)) continue;
      forServer.delete(name);
      forServer.set(name, ++this.markSeq);
      renewed++;
    }
    return renewed;
  }

  /** Drops the mark on a copy that is no longer part of its file; whether there was one. */
  clearMark(id: string, name: string): boolean {
    const forServer = this.marks.get(id);
    if (!forServer?.delete(name)) return false;
    if (forServer.size === 0) this.marks.delete(id);
    return true;
  }

  isBehind(id: string, name: string): boolean {
    return this.marks.get(id)?.has(name) ?? false;
  }

  behindCount(id: string): number {
    return this.marks.get(id)?.size ?? 0;
  }

  /** A server finished a full catch-up with everything marked up to `upTo`: those marks go, and it stops syncing. */
  synced(id: string, upTo: number, boot = this.boot): { cleared: string[] } {
    this.requireCurrentSeq(id, upTo, boot);
    const cleared: string[] = [];
    const forServer = this.marks.get(id);
    if (forServer) {
      for (const [name, seq] of forServer) {
        if (seq <= upTo) {
          forServer.delete(name);
          cleared.push(name);
        }
      }
      if (forServer.size === 0) this.marks.delete(id);
    }
    this.members.get(id)!.syncing = false;
    return { cleared };
  }

  /** A server caught up the named copies with everything marked up to `upTo`: their marks go. */
  caughtUp(id: string, upTo: number, names: readonly string[], boot = this.boot): { cleared: string[] } {
    this.requireCurrentSeq(id, upTo, boot);
    const cleared: string[] = [];
    const forServer = this.marks.get(id);
    if (!forServer) return { cleared };
    for (const name of names) {
      const seq = forServer.get(name);
      if (seq !== undefined && seq <= upTo) {
        forServer.delete(name);
        cleared.push(name);
      }
    }
    if (forServer.size === 0) this.marks.delete(id);
    return { cleared };
  }

  private requireCurrentSeq(id: string, upTo: number, boot: string): void {
    this.requireUp(id);
    // A catch-up begun under an earlier run of the directory: its sequence numbers are not these.
    if (boot !== this.boot) throw new DfsError('NOT_FOUND', `the directory restarted since this catch-up began; register again`);
    if (upTo > this.markSeq) {
      throw new DfsError('BAD_REQUEST', `upTo ${upTo} is ahead of the directory's mark sequence ${this.markSeq}; use the markSeq from register or heartbeat`);
    }
  }

  /** Drops what is known about a deleted file's copies; returns the servers whose marks went. */
  forget(name: string, copies: CopySet): string[] {
    this.readCursor.delete(name);
    const cleared: string[] = [];
    for (const id of [copies.primary, ...copies.replicas]) {
      const forServer = this.marks.get(id);
      if (forServer?.delete(name)) {
        cleared.push(id);
        if (forServer.size === 0) this.marks.delete(id);
      }
    }
    return cleared;
  }

  // ------------------------------------------------------------ routing

  /**
   * Chooses the servers for a new file among `known` (registered servers and servers the table
   * names). The primary is the up, caught-up server with the fewest primaries, so that primaries
   * (and so write load) spread evenly; replicas are the others with the fewest files, up ones
   * first. A down replica is acceptable: it catches up when it comes back.
   */
  place(known: Iterable<string>, loadOf: (id: string) => ServerLoad): { primary: string; replicas: string[] } {
    type Candidate = { id: string; up: boolean; syncing: boolean; load: ServerLoad };
    const candidates: Candidate[] = [];
    for (const id of new Set(known)) candidates.push({ id, up: this.isUp(id), syncing: this.isSyncing(id), load: loadOf(id) });
    const ready = candidates.filter((c) => c.up && !c.syncing);
    if (ready.length === 0) {
      const catchingUp = candidates.filter((c) => c.up).map((c) => c.id);
      if (catchingUp.length > 0) {
        throw new DfsError('UNAVAILABLE', `no file server is ready for new files: ${catchingUp.join(', ')} still catching up; try again shortly`);
      }
      throw new DfsError('UNAVAILABLE', 'no file servers are up');
    }
    ready.sort((a, b) => a.load.primaries - b.load.primaries || a.load.files - b.load.files || compareIds(a.id, b.id));
    const primary = ready[0]!;
    const others = candidates.filter((c) => c.id !== primary.id);
    others.sort((a, b) => Number(b.up) - Number(a.up) || a.load.files - b.load.files || compareIds(a.id, b.id));
    return { primary: primary.id, replicas: others.slice(0, this.replication - 1).map((c) => c.id) };
  }

  /**
   * The server that takes writes of a file: its primary, when up. `failoverAfterMs`, when given,
   * says in the error when a replica is due to take over.
   */
  writer(name: string, copies: CopySet, failoverAfterMs?: number): string {
    if (!this.isUp(copies.primary)) {
      const inSync = copies.replicas.some((id) => this.isReadable(id, name));
      const silent = this.silentMs(copies.primary);
      const next =
        failoverAfterMs !== undefined && inSync
          ? `an in-sync replica takes over ${silent === null ? 'shortly' : `in about ${Math.max(0, Math.ceil((failoverAfterMs - silent) / 1000))} s`}`
          : 'writes resume when it comes back (no in-sync replica can take over)';
      throw new DfsError('UNAVAILABLE', `the primary of ${name}, server ${copies.primary}, is down; ${next}`);
    }
    return copies.primary;
  }

  /** Whether a copy is up and in sync: a primary once caught up; a replica when readable. */
  isCopyInSync(id: string, name: string, role: CopyRole): boolean {
    return role === 'primary' ? this.isUp(id) && !this.isSyncing(id) : this.isReadable(id, name);
  }

  /** Registered servers that may take new copies or primaries: up and caught up, in id order. */
  readyMembers(): string[] {
    return [...this.members.keys()].filter((id) => this.isUp(id) && !this.isSyncing(id)).sort(compareIds);
  }

  /** Usable for reads: up, caught up, and not known to have missed a write of this file. */
  isReadable(id: string, name: string): boolean {
    return this.isUp(id) && !this.isSyncing(id) && !this.isBehind(id, name);
  }

  private readProblem(id: string, name: string): string {
    if (!this.isUp(id)) return 'down';
    if (this.isSyncing(id)) return 'catching up';
    return this.isBehind(id, name) ? 'missed writes' : 'ok';
  }

  /**
   * The next usable replica in round-robin order, else the primary when up. While the primary
   * is down, reads stay on the first usable replica instead: a write the primary did not finish
   * (it died between the replicas' commits) may be on one replica and not another, and a reader
   * must not see it appear and vanish from one read to the next.
   */
  reader(name: string, copies: CopySet): { id: string; role: CopyRole } {
    const { replicas } = copies;
    if (!this.isUp(copies.primary)) {
      const steady = replicas.find((id) => this.isReadable(id, name));
      if (steady !== undefined) return { id: steady, role: 'replica' };
    }
    const start = (this.readCursor.get(name) ?? 0) % Math.max(1, replicas.length);
    for (let k = 0; k < replicas.length; k++) {
      const index = (start + k) % replicas.length;
      const id = replicas[index]!;
      if (this.isReadable(id, name)) {
        this.readCursor.set(name, (index + 1) % replicas.length);
        return { id, role: 'replica' };
      }
    }
    if (this.isUp(copies.primary)) return { id: copies.primary, role: 'primary' };
    const why = [copies.primary, ...replicas].map((id) => `${id} (${this.readProblem(id, name)})`).join(', ');
    throw new DfsError('UNAVAILABLE', `no copy of ${name} can be read now: ${why}; try again shortly`);
  }
}

function lastSign(member: Member): number {
  return Math.max(member.registeredAt, member.lastHeartbeat ?? 0);
}

/** Plain code-unit order, the same everywhere (not locale-dependent). */
export function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
