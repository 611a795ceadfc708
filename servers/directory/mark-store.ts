/**
 * The behind marks on disk (`behind_marks.csv` in the directory's data folder), so that which
 * replica copies missed writes survives a restart of the directory (docs/PROTOCOL.md, "File
 * servers: membership and catch-up"). Without them a restart would have to assume every replica
 * of a dead primary stale: its files could neither be read nor fail over until it came back.
 *
 * One CSV row per change: `mark,SERVER,NAME` or `clear,SERVER,NAME`. A mark is appended and
 * fsynced (group commit, append-log.ts) before the `behind` call that made it is answered, so a
 * write is never acknowledged on the strength of a mark that a crash could forget. Clears are
 * appended without waiting: losing one to a crash only brings a mark back, which is safe (that
 * copy catches up once more). The file is rewritten with only the marks in force at each start
 * and whenever it holds more than max(10,000, 4 × marks) rows.
 *
 * A torn last line is a mark whose `behind` call was never answered: it is ignored. A line that
 * cannot be read elsewhere is logged; its mark, if it was one, is lost (the file is the directory's
 * own and is written whole lines at a time, so only damage to the disk can cause it).
 */
import { mkdir } from 'node:fs/promises';
import { readIfExists } from '../../shared/durable.js';
import { join } from 'node:path';
import { stringify } from 'csv-stringify/sync';
import { silentLogger, type Logger } from '../../shared/log.js';
import { nameProblem } from '../../shared/names.js';
import { serverId as serverIdSchema } from '../../shared/protocol.js';
import { AppendLog, journalRows } from './append-log.js';

export const MARKS_FILE = 'behind_marks.csv';
const HEADER = 'op,server_id,name\n';
const COMPACT_AFTER_ROWS = 10_000;

export interface MarkedCopy {
  server: string;
  name: string;
}

/** The marks in force after replaying the file's lines, in the order they were made. */
export function replayMarks(text: string): { marks: MarkedCopy[]; badLines: number[] } {
  const marks = new Map<string, MarkedCopy>();
  const badLines: number[] = [];
  for (const { line, fields } of journalRows(text)) {
    if (fields === null) {
      badLines.push(line);
      continue;
    }
    const [op, server, name] = fields as [string, string, string];
    if (fields.length !== 3 || (op !== 'mark' && op !== 'clear') || !serverIdSchema.safeParse(server).success || nameProblem(name) !== null) {
      badLines.push(line);
      continue;
    }
    const key = `${server}\u0000${name}`;
    marks.delete(key);
    if (op === 'mark') marks.set(key, { server, name });
  }
  return { marks: [...marks.values()], badLines };
}

export class MarkStore {
  private rows = 0;
  private marked = 0;
  private compacting: Promise<void> | null = null;

  private constructor(
    private readonly log: AppendLog,
    private readonly logger: Logger,
    private readonly current: () => Iterable<MarkedCopy>,
  ) {}

  /**
   * Loads the marks in `dir` and rewrites the file with them alone. `current` gives the marks in
   * force at any later moment (the cluster's), for the rewrites to come.
   */
  static async open(dir: string, current: () => Iterable<MarkedCopy>, options: { log?: Logger; onFailure?: (err: Error) => void } = {}): Promise<{ store: MarkStore; marks: MarkedCopy[] }> {
    const logger = options.log ?? silentLogger;
    await mkdir(dir, { recursive: true });
    const path = join(dir, MARKS_FILE);
    const text = (await readIfExists(path))?.toString('utf8') ?? '';
    const { marks, badLines } = replayMarks(text);
    if (badLines.length > 0) logger.error('behind marks: lines that cannot be read were skipped', { file: path, lines: badLines.slice(0, 20).join(','), count: badLines.length });
    const log = await AppendLog.open(path, (err) => {
      logger.error('cannot write the behind marks; refusing marks until restarted', { error: err.message });
      options.onFailure?.(err);
    });
    const store = new MarkStore(log, logger, current);
    await log.hold(() => log.rewrite(HEADER + formatRows('mark', marks)));
    store.rows = store.marked = marks.length;
    if (marks.length > 0) logger.info('behind marks loaded', { marks: marks.length });
    return { store, marks };
  }

  /** Records marks; resolves once they are durable. */
  async mark(copies: readonly MarkedCopy[]): Promise<void> {
    if (copies.length === 0) return;
    this.rows += copies.length;
    this.marked += copies.length;
    const durable = this.log.append(formatRows('mark', copies));
    this.maybeCompact();
    await durable;
  }

  /** Records cleared marks, without waiting for the disk. */
  clear(copies: readonly MarkedCopy[]): void {
    if (copies.length === 0) return;
    this.rows += copies.length;
    this.marked = Math.max(0, this.marked - copies.length);
    this.log.append(formatRows('clear', copies)).catch(() => {}); // a failure is reported by onFailure
    this.maybeCompact();
  }

  async close(): Promise<void> {
    await this.compacting?.catch(() => {});
    await this.log.close();
  }

  private maybeCompact(): void {
    if (this.compacting || this.rows <= Math.max(COMPACT_AFTER_ROWS, 4 * this.marked)) return;
    this.compacting = this.log
      .hold(async () => {
        // Marks and clears queued meanwhile are written after this, in order, so none is lost.
        const now = [...this.current()];
        await this.log.rewrite(HEADER + formatRows('mark', now));
        this.rows = this.marked = now.length;
      })
      .catch((err: Error) => this.logger.error('could not rewrite the behind marks; the file keeps every change', { error: err.message }))
      .finally(() => (this.compacting = null));
  }
}

function formatRows(op: 'mark' | 'clear', copies: readonly MarkedCopy[]): string {
  return copies.length === 0 ? '' : stringify(copies.map((c) => [op, c.server, c.name]));
}
