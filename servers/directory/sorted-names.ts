/**
 * The file names in sorted order, for `list`, `holdings` and the snapshot, kept so that a create
 * stays O(1): new names are only noted, and merged into the sorted array the next time someone
 * needs the order (O(n + k log k) for k new names), which is rare next to creates.
 *
 * Order is plain UTF-16 code-unit order (`<`), the same on every machine.
 */
import { jsonBytes } from '../../shared/pages.js';

export class SortedNames {
  private sorted: string[] = [];
  private added: string[] = [];
  private removedSinceMerge = false;
  /** Too many notes piled up (churn with nobody listing): rebuild from the live names instead. */
  private rebuild = false;

  constructor(
    /** Whether a name currently exists. */
    private readonly isLive: (name: string) => boolean,
    /** All live names, in any order. */
    private readonly liveNames: () => Iterable<string>,
    private readonly liveCount: () => number,
  ) {}

  noteAdded(name: string): void {
    if (this.rebuild) return;
    this.added.push(name);
    if (this.added.length > this.liveCount() + 1024) {
      this.added = [];
      this.sorted = [];
      this.rebuild = true;
    }
  }

  noteRemoved(): void {
    this.removedSinceMerge = true;
  }

  /** The live names in order. The array returned is never changed afterwards; do not change it. */
  view(): readonly string[] {
    if (this.rebuild || this.added.length > this.sorted.length) {
      this.sorted = [...this.liveNames()].sort();
    } else if (this.added.length > 0 || this.removedSinceMerge) {
      this.sorted = mergeLive(this.sorted, this.added.sort(), this.isLive);
    }
    this.added = [];
    this.removedSinceMerge = false;
    this.rebuild = false;
    return this.sorted;
  }

  /**
   * Up to `limit` live names, in order, that start with `prefix`, come after `after`, and pass
   * `accept`, taking at most `maxBytes` by `sizeOf` (at least one name); `more` when another
   * such name follows.
   */
  range(options: RangeOptions): { names: string[]; more: boolean } {
    const { prefix = '', after, limit, accept, maxBytes = Infinity, sizeOf } = options;
    const names = this.view();
    // Names sharing a prefix are contiguous in code-unit order, so the scan starts at the later of
    // the prefix and `after`, and stops at the first name without the prefix.
    let index = after !== undefined && after >= prefix ? upperBound(names, after) : lowerBound(names, prefix);
    const out: string[] = [];
    let bytes = 0;
    for (; index < names.length; index++) {
      const name = names[index]!;
      if (!name.startsWith(prefix)) break;
      if (accept && !accept(name)) continue;
      if (out.length === limit) return { names: out, more: true };
      if (maxBytes !== Infinity) {
        const size = sizeOf ? sizeOf(name) : jsonBytes(name);
        if (out.length > 0 && bytes + size > maxBytes) return { names: out, more: true };
        bytes += size;
      }
      out.push(name);
    }
    return { names: out, more: false };
  }
}

export interface RangeOptions {
  prefix?: string;
  after?: string;
  limit: number;
  accept?: (name: string) => boolean;
  /** Most bytes of the page, by `sizeOf` (default: the name's JSON string and a comma). */
  maxBytes?: number;
  sizeOf?: (name: string) => number;
}

/** Merges two sorted arrays, dropping names no longer live and duplicates (a re-created name). */
function mergeLive(a: readonly string[], b: readonly string[], isLive: (name: string) => boolean): string[] {
  const out: string[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const next = j >= b.length || (i < a.length && a[i]! <= b[j]!) ? a[i++]! : b[j++]!;
    if (out.length > 0 && out[out.length - 1] === next) continue;
    if (isLive(next)) out.push(next);
  }
  return out;
}

/** First index whose name is >= key. */
function lowerBound(names: readonly string[], key: string): number {
  let lo = 0;
  let hi = names.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (names[mid]! < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** First index whose name is > key. */
function upperBound(names: readonly string[], key: string): number {
  let lo = 0;
  let hi = names.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (names[mid]! <= key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
