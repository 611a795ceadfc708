/**
 * The file servers an operator is draining (`dfs server drain ID`): they take no new files, and
 * re-replication moves their copies away. Kept in `draining.json` in the directory's data
 * folder (replaced whole, durably), so a drain goes on after a restart of the directory.
 */
import { join } from 'node:path';
import { readIfExists, writeFileDurably } from '../../shared/durable.js';
import { serverId } from '../../shared/protocol.js';

export const DRAINING_FILE = 'draining.json';

export class Draining {
  private constructor(
    private readonly path: string,
    private readonly ids: Set<string>,
  ) {}

  /** Loads the list; a missing file is an empty list, a damaged one is an error (say which). */
  static async open(dir: string): Promise<Draining> {
    const path = join(dir, DRAINING_FILE);
    const text = (await readIfExists(path))?.toString('utf8') ?? null;
    const ids = new Set<string>();
    if (text !== null) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new Error(`${path} is not JSON; fix it (a list of server ids, e.g. {"draining":["fs-2"]}) or remove it`);
      }
      const list = (parsed as { draining?: unknown }).draining;
      if (!Array.isArray(list) || !list.every((id) => serverId.safeParse(id).success)) {
        throw new Error(`${path} should be {"draining": [server ids]}; fix it or remove it`);
      }
      for (const id of list as string[]) ids.add(id);
    }
    return new Draining(path, ids);
  }

  has(id: string): boolean {
    return this.ids.has(id);
  }

  list(): string[] {
    return [...this.ids].sort();
  }

  async add(id: string): Promise<void> {
    if (this.ids.has(id)) return;
    await this.save([...this.ids, id]);
    this.ids.add(id);
  }

  async delete(id: string): Promise<void> {
    if (!this.ids.has(id)) return;
    await this.save([...this.ids].filter((x) => x !== id));
    this.ids.delete(id);
  }

  private async save(ids: string[]): Promise<void> {
    await writeFileDurably(this.path, JSON.stringify({ draining: ids.sort() }) + '\n');
  }
}
