/**
 * The client's content cache: file contents keyed by name, with the (epoch, version) they are
 * at, bounded by total bytes (lru-cache). Entries are only ever replaced by a write this
 * client made (write-through) or by content a server sent; a read sends the cached version so
 * that an unchanged file crosses the network as a NOT_MODIFIED answer of a few bytes.
 */
import { LRUCache } from 'lru-cache';
import type { FileMeta } from '../shared/protocol.js';

export interface CachedFile extends FileMeta {
  content: Buffer;
}

/** Bookkeeping bytes counted per entry besides its content. */
const ENTRY_OVERHEAD_BYTES = 256;

export class ContentCache {
  private readonly lru: LRUCache<string, CachedFile>;
  readonly maxEntryBytes: number;

  constructor(maxBytes: number) {
    this.maxEntryBytes = Math.max(0, Math.floor(maxBytes / 4));
    this.lru = new LRUCache<string, CachedFile>({
      maxSize: Math.max(1, maxBytes),
      maxEntrySize: Math.max(1, this.maxEntryBytes + ENTRY_OVERHEAD_BYTES),
      sizeCalculation: (entry) => entry.content.length + ENTRY_OVERHEAD_BYTES,
    });
  }

  get(name: string): CachedFile | undefined {
    return this.lru.get(name);
  }

  /** Stores an entry unless it is too large to cache or older than what is cached. */
  set(entry: CachedFile): void {
    if (entry.content.length > this.maxEntryBytes) {
      this.lru.delete(entry.name);
      return;
    }
    const existing = this.lru.peek(entry.name);
    if (existing && existing.epoch === entry.epoch && existing.version > entry.version) return;
    this.lru.set(entry.name, entry);
  }

  delete(name: string): void {
    this.lru.delete(name);
  }

  get bytes(): number {
    return this.lru.calculatedSize;
  }

  get entries(): number {
    return this.lru.size;
  }
}
