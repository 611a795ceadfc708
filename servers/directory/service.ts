/**
 * The directory service: the file table (file-table.ts) and the cluster view (cluster.ts) wired
 * to an RpcServer. Arguments are checked by the schemas in shared/protocol.ts before a handler
 * runs; the handlers check what a schema cannot (the file exists, the server holds that copy).
 */
import { randomBytes } from 'node:crypto';
import { DfsError } from '../../shared/errors.js';
import type { ConnectionLimits } from '../../shared/args.js';
import type { Logger } from '../../shared/log.js';
import { PAGE_BYTES, jsonBytes } from '../../shared/pages.js';
import {
  directoryOps,
  type BehindResult,
  type DrainResult,
  type RebalanceResult,
  type CopyStatus,
  type HeartbeatResult,
  type HoldingsResult,
  type InfoResult,
  type ListResult,
  type LocateResult,
  type Placement,
  type PlacementResult,
  type RegisterResult,
  type ServerRef,
  type ServerStatus,
  type StatusResult,
  type SyncedResult,
} from '../../shared/protocol.js';
import { requireService } from '../../shared/auth/peers.js';
import type { Transport } from '../../shared/tls/transport.js';
import { RpcServer, op, type Handlers } from '../../shared/rpc.js';
import type { RunningService } from '../../shared/service.js';
import { Cluster, compareIds } from './cluster.js';
import { Draining } from './draining.js';
import { Failover } from './failover.js';
import { MarkStore, type MarkedCopy } from './mark-store.js';
import { PlacementChanges, type NamedEntry } from './placement-changes.js';
import { planRebalance } from './rebalance.js';
import { DEFAULT_REPLACE_AFTER_MS, Rereplication } from './rereplication.js';
import { FileTable, type FileEntry } from './file-table.js';

export const DEFAULT_LIST_LIMIT = 1000;

export interface DirectoryOptions {
  /** TLS with the directory's certificate (the default), or --insecure. */
  transport: Transport;
  host: string;
  port: number;
  /** Folder of the file table. */
  dataDir: string;
  /** Handed to clients by `info`, so that they need only the directory's URL. */
  lockUrl: string;
  replication: number;
  downAfterMs: number;
  /** A primary silent this long is replaced by an in-sync replica (default: downAfterMs). */
  failoverAfterMs?: number;
  /** A server silent this long has its copies made again on other servers (default 5 minutes). */
  replaceAfterMs?: number;
  log: Logger;
  /** Called if the table can no longer be saved; the process should stop. */
  onFatal?: (err: Error) => void;
  /** Table compaction threshold (tests set it low). */
  compactAfterRows?: number;
  maxMessageBytes?: number;
  connections?: ConnectionLimits;
}

export interface DirectoryService extends RunningService {
  readonly url: string;
  readonly port: number;
  readonly table: FileTable;
  readonly cluster: Cluster;
  readonly failover: Failover;
  readonly rereplication: Rereplication;
}

export async function startDirectory(options: DirectoryOptions): Promise<DirectoryService> {
  const { log } = options;
  const table = await FileTable.open(options.dataDir, {
    log,
    compactAfterRows: options.compactAfterRows,
    onFailure: (err) => options.onFatal?.(err),
  });
  const cluster = new Cluster({ replication: options.replication, downAfterMs: options.downAfterMs, boot: randomBytes(8).toString('hex') });
  const refOf = serverRefs(table, cluster);
  const draining = await Draining.open(options.dataDir);
  let markStore: MarkStore;
  try {
    const opened = await MarkStore.open(options.dataDir, () => cluster.allMarks(), { log, onFailure: (err) => options.onFatal?.(err) });
    markStore = opened.store;
    cluster.loadMarks(opened.marks);
  } catch (err) {
    await table.close();
    throw err;
  }
  /** Marks copies behind in memory at once and on disk; resolves once durable. */
  const markBehind = async (copies: readonly MarkedCopy[]): Promise<void> => {
    for (const c of copies) cluster.markBehind(c.name, c.server);
    await markStore.mark(copies);
  };
  const forgetMarks = (copies: readonly MarkedCopy[]): void => markStore.clear(copies.filter((c) => cluster.clearMark(c.server, c.name)));
  const changes = new PlacementChanges(table, cluster, refOf, markBehind, forgetMarks, log, options.transport);
  const failover = new Failover(table, cluster, changes, { failoverAfterMs: options.failoverAfterMs ?? options.downAfterMs, log });
  const rereplication = new Rereplication(table, cluster, changes, draining, { replaceAfterMs: options.replaceAfterMs ?? DEFAULT_REPLACE_AFTER_MS, log });
  const services = { failover, rereplication, changes, draining, markStore, markBehind };
  const server = new RpcServer({
    transport: options.transport,
    host: options.host,
    port: options.port,
    log,
    maxMessageBytes: options.maxMessageBytes,
    ...options.connections,
    handlers: directoryHandlers(table, cluster, options, services),
  });
  try {
    await server.listen();
  } catch (err) {
    await table.close();
    throw err;
  }

  const sweepTimer = setInterval(() => {
    sweep(cluster, log);
    failover.tick();
    rereplication.tick();
  }, Math.max(20, Math.min(250, Math.floor(options.downAfterMs / 4))));
  log.info('listening', {
    url: server.url,
    files: table.size,
    replication: options.replication,
    lock: options.lockUrl,
    downAfterMs: options.downAfterMs,
    failoverAfterMs: failover.failoverAfterMs,
    replaceAfterMs: rereplication.replaceAfterMs,
    draining: draining.list().join(',') || undefined,
  });

  let closing: Promise<void> | null = null;
  return {
    url: server.url,
    port: server.port,
    table,
    cluster,
    failover,
    rereplication,
    close() {
      closing ??= (async () => {
        clearInterval(sweepTimer);
        await changes.exclusive(async () => {}).catch(() => {});
        changes.close();
        await server.close();
        await table.close();
        await markStore.close();
        log.info('file table saved', { files: table.size });
      })();
      return closing;
    },
  };
}

function sweep(cluster: Cluster, log: Logger): void {
  for (const { id, silentMs } of cluster.sweep()) {
    log.warn('server down', { id, url: cluster.urlOf(id), silentMs, reason: 'no heartbeat' });
  }
}

/** The registry's URL wins over the table's: it is what the server said most recently. */
function serverRefs(table: FileTable, cluster: Cluster): (id: string) => ServerRef {
  return (id) => ({ id, url: cluster.urlOf(id) ?? table.urlOf(id) ?? '' });
}

interface PlacementServices {
  failover: Failover;
  rereplication: Rereplication;
  changes: PlacementChanges;
  draining: Draining;
  markStore: MarkStore;
  markBehind: (copies: readonly MarkedCopy[]) => Promise<void>;
}

export function directoryHandlers(table: FileTable, cluster: Cluster, options: DirectoryOptions, services: PlacementServices): Handlers {
  const { log } = options;
  const { failover, rereplication, changes, draining, markStore, markBehind } = services;
  const cleared = (server: string, names: readonly string[]) => markStore.clear(names.map((name) => ({ server, name })));
  const refOf = serverRefs(table, cluster);

  const placementOf = (name: string, entry: FileEntry): Placement => ({
    name,
    epoch: entry.epoch,
    placementEpoch: entry.placementEpoch,
    primary: refOf(entry.primary),
    replicas: entry.replicas.map(refOf),
  });

  const entryOf = (name: string): FileEntry => {
    const entry = table.get(name);
    if (!entry) throw new DfsError('NOT_FOUND', `no file named ${name}`);
    return entry;
  };

  /** Servers a new file may go to: those registered, and those the table knows but are away. */
  const knownServers = (): Set<string> => new Set([...cluster.memberIds(), ...table.serverIds()]);

  return {
    info: op(directoryOps.info, (): InfoResult => ({ lockUrl: options.lockUrl, replication: cluster.replication })),

    create: op(directoryOps.create, async ({ name }): Promise<Placement> => {
      if (table.has(name)) throw new DfsError('EXISTS', `${name} already exists`);
      const chosen = cluster.place([...knownServers()].filter((id) => !draining.has(id)), (id) => table.loadOf(id));
      const entry = await table.create(name, refOf(chosen.primary), chosen.replicas.map(refOf));
      log.debug('created', { name, epoch: entry.epoch, primary: entry.primary, replicas: entry.replicas.join(',') });
      return placementOf(name, entry);
    }),

    locate: op(directoryOps.locate, ({ name, for: purpose }): LocateResult => {
      const entry = entryOf(name);
      const chosen = purpose === 'write' ? { id: cluster.writer(name, entry, failover.failoverAfterMs), role: 'primary' as const } : cluster.reader(name, entry);
      return { name, epoch: entry.epoch, placementEpoch: entry.placementEpoch, server: refOf(chosen.id), role: chosen.role };
    }),

    placement: op(directoryOps.placement, ({ name }): PlacementResult => {
      const entry = entryOf(name);
      const copy = (id: string, role: 'primary' | 'replica'): CopyStatus => ({
        ...refOf(id),
        role,
        up: cluster.isUp(id),
        inSync: cluster.isCopyInSync(id, name, role),
      });
      return { ...placementOf(name, entry), copies: [copy(entry.primary, 'primary'), ...entry.replicas.map((id) => copy(id, 'replica'))] };
    }),

    list: op(directoryOps.list, ({ prefix, after, limit }): ListResult => table.list({ prefix, after, limit: limit ?? DEFAULT_LIST_LIMIT, maxBytes: PAGE_BYTES })),

    delete: op(directoryOps.delete, async ({ name, epoch }): Promise<Placement> => {
      const current = entryOf(name);
      if (epoch !== undefined && current.epoch !== epoch) throw new DfsError('NOT_FOUND', `${name} at epoch ${epoch} no longer exists (it was created again, epoch ${current.epoch})`);
      const placement = placementOf(name, current);
      const entry = await table.remove(name);
      for (const server of cluster.forget(name, entry)) cleared(server, [name]);
      log.debug('deleted', { name, epoch: entry.epoch });
      return placement;
    }),

    status: op(directoryOps.status, (): StatusResult => {
      const servers: ServerStatus[] = [...knownServers()].sort(compareIds).map((id) => {
        const member = cluster.view(id);
        const load = table.loadOf(id);
        const up = member?.up ?? false;
        return {
          ...refOf(id),
          state: up ? 'up' : 'down',
          sync: member?.syncing ? 'syncing' : cluster.behindCount(id) > 0 ? 'behind' : 'in-sync',
          lastHeartbeat: member?.lastHeartbeat ?? null,
          files: load.files,
          primaries: load.primaries,
          behindFiles: cluster.behindCount(id),
          draining: draining.has(id) || undefined,
        };
      });
      let underReplicated = 0;
      for (const [name, entry] of table.files()) {
        let inSync = cluster.isCopyInSync(entry.primary, name, 'primary') ? 1 : 0;
        for (const id of entry.replicas) if (cluster.isCopyInSync(id, name, 'replica')) inSync++;
        if (inSync < cluster.replication) underReplicated++;
      }
      return {
        servers,
        files: table.size,
        replication: cluster.replication,
        lockUrl: options.lockUrl,
        rejectedRows: table.rejectedAtLoad,
        underReplicated,
        lastFailover: failover.last,
        failoverAfterMs: failover.failoverAfterMs,
        rereplication: rereplication.status(),
      };
    }),

    register: op(directoryOps.register, async ({ id, url, fresh }, ctx): Promise<RegisterResult> => {
      requireService(ctx.conn, 'register', 'file-server', id);
      if (fresh) {
        // Its data folder is new (or was lost): none of its replica copies holds anything yet.
        // Marked before the registration's mark sequence is taken, so that the full catch-up
        // that follows checks them all and its `synced` clears them.
        const copies: MarkedCopy[] = [];
        for (const [name, entry] of table.files()) if (entry.replicas.includes(id)) copies.push({ server: id, name });
        await markBehind(copies);
        if (copies.length > 0) log.warn('a server registered with a fresh data folder; its replica copies are marked behind until it catches up', { id, copies: copies.length });
      }
      const registration = cluster.register(id, url);
      ctx.conn.label = id;
      const held = table.loadOf(id);
      const event = { new: 'server registered', down: 'server rejoined', up: 'server registered again' }[registration.before];
      log.info(event, {
        id,
        url,
        files: held.files,
        primaries: held.primaries,
        markSeq: registration.markSeq,
      });
      const tableUrl = table.urlOf(id);
      if (tableUrl !== undefined && tableUrl !== url) {
        const rows = await table.setServerUrl(id, url);
        log.info('server moved; its rows now carry the new URL', { id, from: tableUrl, to: url, rows });
      }
      return { heartbeatMs: cluster.heartbeatMs, markSeq: registration.markSeq, boot: cluster.boot };
    }),

    heartbeat: op(directoryOps.heartbeat, ({ id }, ctx): HeartbeatResult => {
      requireService(ctx.conn, 'heartbeat', 'file-server', id);
      // A server silent past the limit is marked down (and logged) before its heartbeat is refused.
      sweep(cluster, log);
      return cluster.heartbeat(id);
    }),

    holdings: op(directoryOps.holdings, ({ id, after, limit }, ctx): HoldingsResult => {
      requireService(ctx.conn, 'holdings', 'file-server', id);
      // Each copy names its servers by id; their URLs go once per page, in `servers`.
      const copyOf = (name: string) => {
        const entry = table.get(name)!;
        return {
          name,
          epoch: entry.epoch,
          placementEpoch: entry.placementEpoch,
          role: entry.primary === id ? ('primary' as const) : ('replica' as const),
          primary: entry.primary,
          replicas: [...entry.replicas],
        };
      };
      // A copy's size counts the URLs of servers the page has not named yet. The copy that
      // overflows the page may leave its servers in the map: a few hundred bytes, within the margin.
      const servers: Record<string, string> = {};
      const sizeOf = (name: string) => {
        const entry = table.get(name)!;
        let bytes = 0;
        for (const sid of [entry.primary, ...entry.replicas]) {
          if (servers[sid] !== undefined) continue;
          servers[sid] = refOf(sid).url;
          bytes += jsonBytes(sid) + jsonBytes(servers[sid]);
        }
        return bytes + jsonBytes(copyOf(name));
      };
      const { copies, more } = table.holdings(id, { after, limit: limit ?? DEFAULT_LIST_LIMIT, maxBytes: PAGE_BYTES - 2048, sizeOf });
      return { copies: copies.map(({ name }) => copyOf(name)), servers, more };
    }),

    synced: op(directoryOps.synced, ({ id, upTo, boot }, ctx): SyncedResult => {
      requireService(ctx.conn, 'synced', 'file-server', id);
      sweep(cluster, log);
      const done = cluster.synced(id, upTo, boot).cleared;
      cleared(id, done);
      log.info('server synced', { id, upTo, cleared: done.length, stillBehind: cluster.behindCount(id) });
      return { markSeq: cluster.currentMarkSeq, behind: cluster.behindCount(id) };
    }),

    caughtUp: op(directoryOps.caughtUp, ({ id, upTo, boot, names }, ctx): SyncedResult => {
      requireService(ctx.conn, 'caughtUp', 'file-server', id);
      sweep(cluster, log);
      const done = cluster.caughtUp(id, upTo, names, boot).cleared;
      cleared(id, done);
      log.info('server caught up copies', { id, upTo, names: names.length, cleared: done.length, stillBehind: cluster.behindCount(id) });
      return { markSeq: cluster.currentMarkSeq, behind: cluster.behindCount(id) };
    }),

    behind: op(directoryOps.behind, async ({ id, by, names, keep }, ctx): Promise<BehindResult> => {
      requireService(ctx.conn, 'behind', 'file-server', by);
      let marked = 0;
      let ignored = 0;
      let refused = 0;
      if (keep) {
        // A server that could not check these copies keeps the marks they have, and gets no new ones.
        if (by !== id) throw new DfsError('BAD_REQUEST', 'keep is for a server reporting its own copies (by = id)');
        marked = cluster.renewMarks(id, names);
        return { markSeq: cluster.currentMarkSeq, marked, ignored: names.length - marked, refused };
      }
      const fresh: MarkedCopy[] = [];
      const all: MarkedCopy[] = [];
      for (const name of names) {
        const entry = table.get(name);
        // A report from a server that lost the primary role (failover) must not let its write count.
        if (entry && by !== id && (entry.primary !== by || changes.isBeingReplaced(name, by))) {
          refused++;
          continue;
        }
        // Only replica copies can be behind: reads fall back to a primary whatever its marks.
        if (!(entry?.replicas.includes(id) ?? false)) {
          ignored++;
          continue;
        }
        if (cluster.markBehind(name, id).fresh) fresh.push({ server: id, name });
        all.push({ server: id, name });
        marked++;
      }
      // On disk before the answer: the primary acknowledges its write on the strength of it. Every
      // mark is written, not only new ones: the first report of a copy may still be waiting for
      // its fsync when a second (a retry) comes (appends share fsyncs, so this costs little).
      await markStore.mark(all);
      if (fresh.length > 0) log.info('copies marked behind', { id, names: fresh.length, first: names[0], behindFiles: cluster.behindCount(id) });
      else if (marked > 0) log.debug('copies marked behind again', { id, names: marked });
      if (refused > 0) log.info('refused behind marks from a server that is not the primary', { id, by, names: refused, first: names[0] });
      return { markSeq: cluster.currentMarkSeq, marked, ignored, refused };
    }),

    drain: op(directoryOps.drain, async ({ id }): Promise<DrainResult> => {
      if (!knownServers().has(id)) throw new DfsError('NOT_FOUND', `no file server ${id} is known`);
      await draining.add(id);
      const load = table.loadOf(id);
      log.info('draining a server: it takes no new files and its copies move away', { id, files: load.files, primaries: load.primaries });
      return { id, ...load };
    }),

    undrain: op(directoryOps.undrain, async ({ id }): Promise<DrainResult> => {
      if (!draining.has(id)) throw new DfsError('NOT_FOUND', `server ${id} is not being drained`);
      await draining.delete(id);
      log.info('no longer draining a server', { id });
      return { id, ...table.loadOf(id) };
    }),

    remove: op(directoryOps.remove, async ({ id }): Promise<DrainResult> => {
      if (!knownServers().has(id)) throw new DfsError('NOT_FOUND', `no file server ${id} is known`);
      const load = table.loadOf(id);
      if (load.files > 0) {
        throw new DfsError('BAD_REQUEST', `server ${id} still holds ${load.files} copies (${load.primaries} as primary); drain it first (dfs server drain ${id}) and remove it once it holds none`);
      }
      await draining.delete(id);
      cleared(id, cluster.removeMember(id));
      log.info('server removed', { id });
      return { id, ...load };
    }),

    rebalance: op(directoryOps.rebalance, async (): Promise<RebalanceResult> => {
      const live = cluster.readyMembers().filter((id) => !draining.has(id));
      const moved = await changes.exclusive(async () => {
        const plan = planRebalance(table.files(), live, (id, name) => cluster.isReadable(id, name));
        let count = 0;
        for (const [from, moves] of plan) {
          const files: NamedEntry[] = [];
          for (const name of moves.keys()) {
            const entry = table.get(name);
            if (entry && entry.primary === from) files.push([name, entry]);
          }
          const result = await changes.handOver(from, files, moves);
          count += result.moved.length;
          log.info('rebalance: moved primaries', { from, files: files.length, moved: result.moved.length, stuck: result.stuck });
        }
        return count;
      });
      const primaries: Record<string, number> = {};
      for (const id of live) primaries[id] = table.loadOf(id).primaries;
      log.info('rebalanced', { moved, primaries: JSON.stringify(primaries) });
      return { moved, primaries };
    }),
  } satisfies Record<keyof typeof directoryOps, unknown>;
}
