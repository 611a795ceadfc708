/**
 * What this file server knows of the directory's table: for each file it holds a copy of, the
 * file's epoch, placement epoch, primary and replicas. Loaded at registration, kept current by
 * the writes and deletes that pass through and by the directory's `rep.placement` pushes, and
 * refreshed from the directory on a miss, an epoch mismatch (a file created after registration,
 * or deleted and created again), or a peer that shows a newer placement epoch.
 *
 * A *fenced* copy (`rep.fence`, sent by the directory just before it changes the file's
 * primary) already carries the coming placement epoch but not yet the coming placement: it
 * refuses replication from the old primary (whose epoch is now older) and, if this server was the
 * primary, writes. The placement that follows lifts the fence; so does a refresh that still shows
 * the older placement once FENCE_HOLD_MS have passed (the change was abandoned: the directory
 * fences again if it tries again).
 */
import { DfsError } from '../../shared/errors.js';
import type { Holding, PlacementResult, ServerRef } from '../../shared/protocol.js';
import type { RpcConnection } from '../../shared/rpc.js';

/** How long a fence holds against a directory that still shows the older placement. */
const FENCE_HOLD_MS = 30_000;

export class Holdings {
  private readonly byName = new Map<string, Holding>();
  /** Fenced copies: name → when. */
  private readonly fenced = new Map<string, number>();

  constructor(
    private readonly selfId: string,
    private readonly directory: () => Promise<RpcConnection>,
  ) {}

  replaceAll(copies: Iterable<Holding>): void {
    this.byName.clear();
    this.fenced.clear();
    for (const copy of copies) this.byName.set(copy.name, copy);
  }

  get(name: string): Holding | undefined {
    return this.byName.get(name);
  }

  all(): IterableIterator<Holding> {
    return this.byName.values();
  }

  forget(name: string): void {
    this.byName.delete(name);
    this.fenced.delete(name);
  }

  isFenced(name: string): boolean {
    return this.fenced.size > 0 && this.fenced.has(name);
  }

  /** Whether this server may take writes of `holding`'s file now: it is the primary, not fenced. */
  isWritablePrimary(holding: Holding): boolean {
    const now = this.byName.get(holding.name);
    return now !== undefined && now.role === 'primary' && now.epoch === holding.epoch && now.placementEpoch === holding.placementEpoch && !this.isFenced(holding.name);
  }

  /**
   * Fences a copy at `placementEpoch` (see above). Returns false when this server holds no copy
   * of that file, or already knows a newer placement.
   */
  fence(name: string, epoch: number, placementEpoch: number): boolean {
    const known = this.byName.get(name);
    if (!known || known.epoch !== epoch || known.placementEpoch > placementEpoch) return false;
    if (known.placementEpoch < placementEpoch || this.fenced.has(name)) {
      this.byName.set(name, { ...known, placementEpoch });
      this.fenced.set(name, Date.now());
    }
    return true;
  }

  /**
   * Takes a placement the directory sent, unless an older one: returns what it replaced (the
   * previous holding, or null) when it changed anything, undefined when not.
   */
  adopt(holding: Holding): Holding | null | undefined {
    const known = this.byName.get(holding.name);
    if (known && known.epoch === holding.epoch) {
      if (known.placementEpoch > holding.placementEpoch) return undefined;
      if (known.placementEpoch === holding.placementEpoch && !this.fenced.has(holding.name)) return undefined;
    }
    this.byName.set(holding.name, holding);
    this.fenced.delete(holding.name);
    return known ?? null;
  }

  /** The directory's current placement of name, asked again whatever is known here. */
  refresh(name: string, epoch?: number): Promise<Holding> {
    const known = this.byName.get(name);
    return this.lookup(name, epoch, known ? known.placementEpoch + 1 : undefined);
  }

  /**
   * The holding for name, asking the directory when it is unknown here, when `epoch` (what a
   * peer or client believes) differs from ours, or when `placementEpoch` is newer than ours (or
   * as new as a fence: the placement it announced has been made). NOT_FOUND when the file does
   * not exist or this server holds no copy of it.
   */
  async lookup(name: string, epoch?: number, placementEpoch?: number): Promise<Holding> {
    const known = this.byName.get(name);
    const fresh =
      known !== undefined &&
      (epoch === undefined || known.epoch === epoch) &&
      (placementEpoch === undefined || placementEpoch < known.placementEpoch || (placementEpoch === known.placementEpoch && !this.isFenced(name)));
    if (fresh) return known;
    const conn = await this.directory();
    let placement: PlacementResult;
    try {
      placement = (await conn.call('placement', { name })).result as PlacementResult;
    } catch (err) {
      if (err instanceof DfsError && err.code === 'NOT_FOUND') this.forget(name);
      throw err;
    }
    const holding = toHolding(placement, this.selfId);
    if (!holding) {
      this.forget(name);
      throw new DfsError('NOT_FOUND', `no copy of ${name} is kept on server ${this.selfId}`, { notHere: true });
    }
    // A fence newer than the directory's answer stays while the change it announced may be under way.
    const now = this.byName.get(name);
    const fencedAt = this.fenced.get(name);
    const fenceHolds = now !== undefined && now.epoch === holding.epoch && now.placementEpoch > holding.placementEpoch && fencedAt !== undefined && Date.now() - fencedAt < FENCE_HOLD_MS;
    if (!fenceHolds) {
      this.byName.set(name, holding);
      this.fenced.delete(name);
    }
    if (epoch !== undefined && holding.epoch !== epoch) {
      throw new DfsError('NOT_FOUND', `${name} was deleted or created again (epoch ${holding.epoch}, not ${epoch}); locate it again`);
    }
    return this.byName.get(name)!;
  }
}

export function toHolding(placement: PlacementResult, selfId: string): Holding | null {
  const isPrimary = placement.primary.id === selfId;
  const isReplica = placement.replicas.some((r: ServerRef) => r.id === selfId);
  if (!isPrimary && !isReplica) return null;
  return {
    name: placement.name,
    epoch: placement.epoch,
    placementEpoch: placement.placementEpoch,
    role: isPrimary ? 'primary' : 'replica',
    primary: placement.primary,
    replicas: placement.replicas,
  };
}
