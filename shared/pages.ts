/**
 * Paged results, sized by bytes. A frame header is at most 64 KiB (shared/frame.ts), so every
 * list that can grow with the number of files goes out in pages of at most PAGE_BYTES of JSON,
 * with room to spare for the rest of the frame; a page holds at least one item whatever its size
 * (no single item comes near the limit: names are at most 255 bytes).
 */

/** JSON bytes the items of one page may take. */
export const PAGE_BYTES = 48 * 1024;

/** Bytes `value` takes as JSON on the wire, with the comma that separates it from the next. */
export function jsonBytes(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value)) + 1;
}

/**
 * Splits items into batches of at most `maxBytes` (by `sizeOf`) and `maxItems`, for requests
 * that carry lists (names to look up, names to mark).
 */
export function* byteBatches<T>(items: Iterable<T>, sizeOf: (item: T) => number, maxBytes = PAGE_BYTES, maxItems = Infinity): Iterable<T[]> {
  let batch: T[] = [];
  let bytes = 0;
  for (const item of items) {
    const size = sizeOf(item);
    if (batch.length > 0 && (bytes + size > maxBytes || batch.length >= maxItems)) {
      yield batch;
      batch = [];
      bytes = 0;
    }
    batch.push(item);
    bytes += size;
  }
  if (batch.length > 0) yield batch;
}

/**
 * Reads a paginated listing whole: each page is asked for with the key of the last item of the
 * page before, until a page says there is no more.
 */
export async function allPages<T>(page: (after: string | undefined) => Promise<{ items: T[]; more: boolean }>, keyOf: (item: T) => string): Promise<T[]> {
  const all: T[] = [];
  let after: string | undefined;
  for (;;) {
    const { items, more } = await page(after);
    for (const item of items) all.push(item);
    if (!more || items.length === 0) return all;
    after = keyOf(items[items.length - 1]!);
  }
}
