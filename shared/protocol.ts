/**
 * The operations each service answers: argument schemas (validated at the boundary by `op()`
 * in rpc.ts) and the shapes of their results. docs/PROTOCOL.md describes the same in prose.
 */
import { z } from 'zod';
import { nameProblem } from './names.js';

// ---------------------------------------------------------------- common pieces

export const fileName = z.string().superRefine((value, ctx) => {
  const problem = nameProblem(value);
  if (problem !== null) ctx.addIssue({ code: 'custom', message: problem });
});

/** Text that has a UTF-8 form (no unpaired surrogate): what `list` compares with file names. */
export const wellFormedText = (maxLength: number) =>
  z
    .string()
    .max(maxLength)
    .refine((value) => value.isWellFormed(), 'must be well-formed Unicode (it has an unpaired UTF-16 surrogate)');

export const serverId = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/, 'a server id is 1-32 letters, digits, "_", "." or "-", starting with a letter or digit');

export const wsUrl = z
  .string()
  .max(256)
  .refine((value) => /^wss?:\/\/[^\s/]+(\/[^\s]*)?$/.test(value), 'expected a ws://host:port URL');

/** Fencing tokens and versions are positive safe integers. */
export const counter = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

export const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'expected a lowercase hex sha256');

export const timeoutMs = z.number().int().min(0).max(3_600_000);

export interface ServerRef {
  id: string;
  url: string;
}

export type CopyRole = 'primary' | 'replica';

export interface Placement {
  name: string;
  /** Changes whenever a name is (re)created, so that copies of an older file are never mistaken for it. */
  epoch: number;
  /**
   * Grows by one each time the file's primary or replicas change (failover, re-replication), from
   * 1 at its creation. File servers refuse replication stamped with an older one (fencing).
   */
  placementEpoch: number;
  primary: ServerRef;
  replicas: ServerRef[];
}

/** Placement epochs are positive whole numbers. */
export const placementEpoch = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);

// ---------------------------------------------------------------- directory service

export const directoryOps = {
  /** Anyone: what a client needs to know besides this URL. */
  info: z.object({}).strict(),
  create: z.object({ name: fileName }).strict(),
  locate: z.object({ name: fileName, for: z.enum(['read', 'write']) }).strict(),
  placement: z.object({ name: fileName }).strict(),
  list: z
    .object({
      prefix: wellFormedText(255).optional(),
      after: wellFormedText(255).optional(),
      limit: z.number().int().min(1).max(10_000).optional(),
    })
    .strict(),
  /** `epoch`, when given, guards against removing a file that was created again meanwhile. */
  delete: z.object({ name: fileName, epoch: counter.optional() }).strict(),
  status: z.object({}).strict(),
  /** File servers. */
  /** `fresh`: the server's data folder is new (or was lost): its replica copies hold nothing yet. */
  register: z.object({ id: serverId, url: wsUrl, fresh: z.boolean().optional() }).strict(),
  heartbeat: z.object({ id: serverId }).strict(),
  holdings: z
    .object({ id: serverId, after: z.string().max(255).optional(), limit: z.number().int().min(1).max(10_000).optional() })
    .strict(),
  /** A full catch-up is done: marks numbered up to `upTo` are cleared and the server stops syncing. */
  synced: z.object({ id: serverId, upTo: counter, boot: z.string().max(64) }).strict(),
  /** A partial catch-up is done for `names`: their marks numbered up to `upTo` are cleared. */
  caughtUp: z.object({ id: serverId, upTo: counter, boot: z.string().max(64), names: z.array(fileName).min(1).max(10_000) }).strict(),
  /**
   * The copies of `names` on server `id` missed writes, as reported by server `by`: their primary,
   * or `id` itself. A report by a server that is no longer a file's primary is refused.
   */
  behind: z
    .object({
      id: serverId,
      by: serverId,
      names: z.array(fileName).min(1).max(10_000),
      /** `by` = `id` only: keep (renew) the marks these copies have, make no new ones (it could not check them). */
      keep: z.boolean().optional(),
    })
    .strict(),
  /** Operators: stop placing files on a server and move its copies away. */
  drain: z.object({ id: serverId }).strict(),
  /** Operators: take a server back (new files go to it again). */
  undrain: z.object({ id: serverId }).strict(),
  /** Operators: forget a server that holds no copies (drained, or never used). */
  remove: z.object({ id: serverId }).strict(),
  /** Operators: move primaries toward an even spread over the live servers. */
  rebalance: z.object({}).strict(),
} as const;

export interface InfoResult {
  lockUrl: string;
  replication: number;
}

export interface LocateResult {
  name: string;
  epoch: number;
  placementEpoch: number;
  server: ServerRef;
  role: CopyRole;
}

export interface CopyStatus extends ServerRef {
  role: CopyRole;
  up: boolean;
  /** Usable for reads: up, caught up, and not known to have missed a write. */
  inSync: boolean;
}

export interface PlacementResult extends Placement {
  copies: CopyStatus[];
}

export interface ListResult {
  names: string[];
  /** More names follow the last one; ask again with `after` set to it. */
  more: boolean;
}

export interface ServerStatus extends ServerRef {
  state: 'up' | 'down';
  /** `syncing` from registration until its catch-up is done; `behind` when some copies missed writes. */
  sync: 'in-sync' | 'syncing' | 'behind';
  /** Milliseconds since the epoch, or null before the first heartbeat. */
  lastHeartbeat: number | null;
  files: number;
  primaries: number;
  behindFiles: number;
  /** Being drained: it takes no new files and its copies are moving away. */
  draining?: boolean;
}

export interface StatusResult {
  servers: ServerStatus[];
  files: number;
  replication: number;
  lockUrl: string;
  /** Rows of the file table the directory could not load at its start, kept in file_table.rejected.csv. */
  rejectedRows?: number;
  /** Files with fewer than `replication` copies up and in sync. */
  underReplicated?: number;
  /** The latest failover round, if one ran since the directory started. */
  lastFailover?: FailoverSummary | null;
  /** How long a primary may be silent before a replica takes over. */
  failoverAfterMs?: number;
  rereplication?: RereplicationStatus;
}

export interface RereplicationStatus {
  /** New copies assigned and not yet made (their servers are copying them). */
  copying: number;
  /** New copies made since the directory started. */
  copied: number;
  /** How long a server may be silent before its copies are made again elsewhere. */
  replaceAfterMs: number;
  lastRound: {
    at: number;
    server: string;
    reason: 'down' | 'drained';
    newCopies: number;
    /** Copies dropped from the drained server once enough others were in sync. */
    dropped: number;
    /** Files for which no live server could take a new copy. */
    noTarget: number;
  } | null;
}

export interface DrainResult {
  id: string;
  /** Copies the server still holds, and how many of them as primary. */
  files: number;
  primaries: number;
}

export interface RebalanceResult {
  /** Primaries moved, and the spread after: server id → primaries. */
  moved: number;
  primaries: Record<string, number>;
}

export interface FailoverSummary {
  /** Milliseconds since the epoch. */
  at: number;
  server: string;
  files: number;
  promoted: number;
  /** Files left without a writable primary: no in-sync replica could take over. */
  stuck: number;
  ms: number;
}

export interface RegisterResult {
  heartbeatMs: number;
  /** The mark sequence at registration: a later `synced` with this `upTo` clears older marks. */
  markSeq: number;
  /**
   * This run of the directory: mark sequence numbers mean something only within one, so
   * `synced` and `caughtUp` carry it, and one from an earlier run is refused.
   */
  boot: string;
}

export interface HeartbeatResult {
  /** Names of this server's copies known to have missed writes, oldest mark first (one page). */
  behind: string[];
  /** More copies are marked than fit in this answer. */
  more: boolean;
  markSeq: number;
  boot: string;
}

export interface SyncedResult {
  markSeq: number;
  /** Copies of this server still marked behind. */
  behind: number;
}

export interface BehindResult {
  markSeq: number;
  marked: number;
  /** Names that are not replica copies on that server (deleted meanwhile, or its primary). */
  ignored: number;
  /** Names whose primary is not the reporter (it lost the role): its write must not be acknowledged. */
  refused: number;
}

/** One copy a server holds, as the directory's table says. */
export interface Holding {
  name: string;
  epoch: number;
  placementEpoch: number;
  role: CopyRole;
  primary: ServerRef;
  replicas: ServerRef[];
}

/** One copy in a compact list: servers by id, their URLs alongside. */
export interface HoldingEntry {
  name: string;
  epoch: number;
  placementEpoch: number;
  role: CopyRole;
  primary: string;
  replicas: string[];
}

/** A page of `holdings`: server ids in the copies, their URLs once in `servers`. */
export interface HoldingsResult {
  copies: HoldingEntry[];
  servers: Record<string, string>;
  more: boolean;
}

/** Expands a holdings page into Holdings with server URLs. */
export function holdingsOf(page: { copies: readonly HoldingEntry[]; servers: Record<string, string> }): Holding[] {
  // One ServerRef per server, shared by every copy of the page: 100,000 holdings stay small.
  const refs = new Map<string, ServerRef>();
  const ref = (id: string): ServerRef => {
    let known = refs.get(id);
    if (!known) refs.set(id, (known = { id, url: page.servers[id] ?? '' }));
    return known;
  };
  return page.copies.map((c) => ({ name: c.name, epoch: c.epoch, placementEpoch: c.placementEpoch, role: c.role, primary: ref(c.primary), replicas: c.replicas.map(ref) }));
}

// ---------------------------------------------------------------- lock service

/** What other clients see as a lock holder's name: printable text, no control characters. */
const clientLabel = z
  .string()
  .min(1)
  .max(64)
  .refine((value) => value.isWellFormed() && !/[\u0000-\u001f\u007f-\u009f]/.test(value), 'a client label is printable text, without control characters');

/** A session id as `hello` issues it: random hex. */
export const lockSessionId = z.string().regex(/^[0-9a-f]{8,32}$/, 'a session id is 8-32 lowercase hex digits');

export const lockOps = {
  /**
   * Opens a session for this connection (or, sent again, changes its label): the answer carries
   * the session id, which others see, and a secret that only this client knows.
   */
  hello: z.object({ client: clientLabel }).strict(),
  /** On a fresh connection after a lock-service restart: takes back a session and its locks. */
  reclaim: z.object({ session: lockSessionId, secret: z.string().min(16).max(128), client: clientLabel }).strict(),
  acquire: z
    .object({
      name: fileName,
      /** How long to wait in line; 0 means do not wait (LOCKED if held). */
      timeoutMs,
    })
    .strict(),
  release: z.object({ name: fileName, token: counter.optional() }).strict(),
  validate: z.object({ name: fileName, token: counter }).strict(),
  /** Locks held or waited for, by name, a page at a time (each page under ~48 KiB of JSON). */
  status: z.object({ name: fileName.optional(), after: z.string().max(1024).optional() }).strict(),
  /** The locks this connection's session holds, by name, a page at a time. */
  held: z.object({ after: z.string().max(1024).optional() }).strict(),
} as const;

export interface HelloResult {
  session: string;
  /** Proves the session is this client's when it reclaims it; the service keeps only a hash. */
  secret: string;
}

export interface ReclaimResult {
  session: string;
  /** How many locks the session holds again; `held` lists them. */
  held: number;
}

export interface AcquireResult {
  name: string;
  token: number;
}

/** Pushed to a waiting acquirer whenever its place in line changes. */
export interface QueuedEvent {
  name: string;
  /** 1 = next in line. */
  position: number;
  holder: string;
}

export interface LockStatus {
  name: string;
  holder: string;
  token: number;
  /** Milliseconds since the epoch when the lock was granted. */
  since: number;
  /** The first waiters, in line order, as many as fit a byte budget; `waiting` counts them all. */
  waiters: string[];
  waiting: number;
}

export interface LockStatusResult {
  locks: LockStatus[];
  /** More locks follow the last one; ask again with `after` set to its name. */
  more: boolean;
}

export interface HeldResult {
  locks: Array<{ name: string; token: number }>;
  more: boolean;
}

export type OpsOf<T> = { [K in keyof T]: T[K] extends z.ZodType ? z.infer<T[K]> : never };
export type DirectoryArgs = OpsOf<typeof directoryOps>;
export type LockArgs = OpsOf<typeof lockOps>;

// ---------------------------------------------------------------- file servers

export { INLINE_CONTENT_BYTES } from './limits.js';

export const writeMode = z.enum(['replace', 'append']);
export type WriteMode = z.infer<typeof writeMode>;

export const fileOps = {
  /** Clients. `ifEpoch`/`ifVersion`: the cached copy; NOT_MODIFIED (no content) when it is current. */
  read: z
    .object({
      name: fileName,
      ifEpoch: counter.optional(),
      ifVersion: counter.optional(),
      /**
       * The newest version of the file (at `minEpoch`) this client has seen: a replica below it
       * answers UNAVAILABLE (details.behind) instead of an older version, so one client's reads
       * never go back. The primary answers whatever it has: it is the file's history.
       */
      minEpoch: counter.optional(),
      minVersion: counter.optional(),
    })
    .strict(),
  stat: z.object({ name: fileName }).strict(),
  /** To the primary, with the fencing token of the lock on `name`. `requestId` makes retries idempotent. */
  write: z
    .object({
      name: fileName,
      epoch: counter,
      token: counter,
      mode: writeMode,
      size: counter,
      sha256: sha256Hex.optional(),
      requestId: z.string().min(8).max(64).regex(/^[\w-]+$/),
      /** The placement the client was given; a server that knows an older one asks the directory again. */
      placementEpoch: placementEpoch.optional(),
    })
    .strict(),
  delete: z.object({ name: fileName, epoch: counter, token: counter }).strict(),
  status: z.object({}).strict(),
  /** Primary → replica: the next version, whole (replace) or as the bytes appended to `baseVersion`. */
  'rep.write': z
    .object({
      name: fileName,
      epoch: counter,
      version: counter,
      baseVersion: counter,
      mode: writeMode,
      size: counter,
      from: serverId,
      /** The sender's placement epoch of the file: refused (STALE_EPOCH) when older than the replica's. */
      placementEpoch,
      mtime: counter,
      /** The client's write this version comes from: a replica made primary recognises its retry. */
      token: counter.optional(),
      requestId: z.string().max(64).regex(/^[\w-]*$/).optional(),
    })
    .strict(),
  /** Primary → replica, after the primary committed: make the prepared version current. */
  'rep.commit': z.object({ name: fileName, epoch: counter, version: counter, from: serverId, placementEpoch }).strict(),
  'rep.delete': z.object({ name: fileName, epoch: counter, from: serverId, placementEpoch }).strict(),
  /**
   * Directory → a file's in-sync copies, before it changes the file's primary: from now on refuse
   * replication stamped below `placementEpoch`, stop any under way, and say which version is held.
   */
  'rep.fence': z
    .object({ copies: z.array(z.object({ name: fileName, epoch: counter, placementEpoch }).strict()).min(1).max(10_000) })
    .strict(),
  /** Directory → every up copy of a file whose placement changed: the new placement. */
  'rep.placement': z
    .object({
      copies: z
        .array(
          z
            .object({ name: fileName, epoch: counter, placementEpoch, role: z.enum(['primary', 'replica']), primary: serverId, replicas: z.array(serverId).max(16) })
            .strict(),
        )
        .min(1)
        .max(10_000),
      servers: z.record(serverId, wsUrl),
      /** The directory's mark sequence (and run): a server given new copies catches them up at once, up to it. */
      markSeq: counter.optional(),
      boot: z.string().max(64).optional(),
    })
    .strict(),
  /** Peers during catch-up: the versions a server holds of the named files. */
  versions: z.object({ names: z.array(fileName).max(10_000) }).strict(),
  /** Replica catching up → primary: the whole current content, whatever the copy's read state. */
  fetch: z.object({ name: fileName, epoch: counter, placementEpoch: placementEpoch.optional() }).strict(),
} as const;

export type FileArgs = OpsOf<typeof fileOps>;

export interface FileMeta {
  name: string;
  epoch: number;
  version: number;
  size: number;
  sha256: string;
  /** Milliseconds since the epoch of the last write. */
  mtime: number;
}

export interface ReadResult extends FileMeta {
  notModified: boolean;
  /** `fetch` only (peers): the client write that made this version, so that a copy knows its retries. */
  requestId?: string;
  token?: number;
}

export interface WriteResult {
  name: string;
  epoch: number;
  version: number;
  size: number;
  sha256: string;
  /** Replicas that were down or failed and are now marked behind. */
  skipped: string[];
}

export interface PreparedResult {
  version: number;
  sha256: string;
  /** The version was already current here (a repeated replication). */
  committed: boolean;
}

export interface VersionsResult {
  files: Array<{ name: string; epoch: number; version: number; sha256: string }>;
}

export interface PlacementAppliedResult {
  /** Copies whose placement changed here; the others were already as new, or are not held here. */
  applied: number;
}

export interface FileServerStatus {
  id: string;
  url: string;
  files: number;
  syncing: boolean;
  catchingUp: number;
  counters: {
    reads: number;
    notModified: number;
    contentBytesSent: number;
    writes: number;
    contentBytesReceived: number;
    replicaWrites: number;
  };
}
