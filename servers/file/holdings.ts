/**
 * What this file server knows of the directory's table: for each file it holds a copy of, the
 * file's epoch, its primary and its replicas. Loaded at registration, kept current by the
 * writes and deletes that pass through, and refreshed from the directory on a miss or an epoch
 * mismatch (a file created after registration, or deleted and created again).
 */
import { DfsError } from '../../shared/errors.js';
import type { Holding, PlacementResult, ServerRef } from '../../shared/protocol.js';
import type { RpcConnection } from '../../shared/rpc.js';

export class Holdings {
  private readonly byName = new Map<string, Holding>();

  constructor(
    private readonly selfId: string,
    private readonly directory: () => Promise<RpcConnection>,
  ) {}

  replaceAll(copies: Iterable<Holding>): void {
    this.byName.clear();
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
  }

  /**
   * The holding for name, asking the directory when it is unknown here or when `epoch` (what a
   * peer or client believes) differs from ours. NOT_FOUND when the file does not exist or this
   * server holds no copy of it.
   */
  async lookup(name: string, epoch?: number): Promise<Holding> {
    const known = this.byName.get(name);
    if (known && (epoch === undefined || known.epoch === epoch)) return known;
    const conn = await this.directory();
    let placement: PlacementResult;
    try {
      placement = (await conn.call('placement', { name })).result as PlacementResult;
    } catch (err) {
      if (err instanceof DfsError && err.code === 'NOT_FOUND') this.byName.delete(name);
      throw err;
    }
    const holding = toHolding(placement, this.selfId);
    if (!holding) {
      this.byName.delete(name);
      throw new DfsError('NOT_FOUND', `no copy of ${name} is kept on server ${this.selfId}`);
    }
    this.byName.set(name, holding);
    if (epoch !== undefined && holding.epoch !== epoch) {
      throw new DfsError('NOT_FOUND', `${name} was deleted or created again (epoch ${holding.epoch}, not ${epoch}); locate it again`);
    }
    return holding;
  }
}

export function toHolding(placement: PlacementResult, selfId: string): Holding | null {
  const isPrimary = placement.primary.id === selfId;
  const isReplica = placement.replicas.some((r: ServerRef) => r.id === selfId);
  if (!isPrimary && !isReplica) return null;
  return {
    name: placement.name,
    epoch: placement.epoch,
    role: isPrimary ? 'primary' : 'replica',
    primary: placement.primary,
    replicas: placement.replicas,
  };
}
