/**
 * Reads a paginated listing whole: each page is asked for with the key of the last item of the
 * page before, until a page says there is no more.
 */
export async function allPages<T>(page: (after: string | undefined) => Promise<{ items: T[]; more: boolean }>, keyOf: (item: T) => string): Promise<T[]> {
  const all: T[] = [];
  let after: string | undefined;
  for (;;) {
    const { items, more } = await page(after);
    all.push(...items);
    if (!more || items.length === 0) return all;
    after = keyOf(items[items.length - 1]!);
  }
}
