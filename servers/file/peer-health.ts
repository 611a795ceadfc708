/**
 * Which peers answer. A replica that does not answer within the replica timeout (frozen,
 * swapping, cut off) must not slow every write down to dead-peer detection: once it has timed
 * out it is skipped at once (its copies are marked behind, as HDFS's pipeline recovery drops a
 * datanode), until a probe in the background hears from it again.
 *
 * `watch(conn, work)` bounds one exchange with a peer: it pings the peer and fails the work with
 * TIMEOUT if nothing at all (no answer, no pong) comes back within the timeout. A peer that is
 * slow but alive (a long fsync) keeps answering pings, so it is never taken for frozen.
 */
import { DfsError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { ConnectionPool } from '../../shared/pool.js';
import type { RpcConnection } from '../../shared/rpc.js';

export class PeerHealth {
  /** url → the probe timer of a peer that timed out. */
  private readonly skipped = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly peers: ConnectionPool,
    readonly timeoutMs: number,
    private readonly log: Logger,
  ) {}

  /** Whether writes should go on without this peer for now. */
  isSkipped(url: string): boolean {
    return this.skipped.has(url);
  }

  /**
   * Runs `work` against `conn`, failing it with TIMEOUT (and `onTimeout`, to cancel it) when the
   * peer goes silent for longer than the timeout.
   */
  async watch<T>(url: string, conn: RpcConnection, work: Promise<T>, onTimeout: (err: DfsError) => void): Promise<T> {
    conn.probe();
    let timer: NodeJS.Timeout | undefined;
    let settled = false;
    const silent = new Promise<never>((_resolve, reject) => {
      const period = Math.max(10, Math.floor(this.timeoutMs / 4));
      let lastCheck = Date.now();
      const check = () => {
        // A late timer means this process stalled: what the peer sent meanwhile is still unread.
        const now = Date.now();
        const stalledFor = now - lastCheck - period;
        lastCheck = now;
        if (conn.silentMs - Math.max(0, stalledFor) > this.timeoutMs) {
          // Answers may be waiting in the socket behind this timer: judge after they are read.
          setImmediate(() => {
            if (settled) return;
            if (conn.silentMs - Math.max(0, stalledFor) <= this.timeoutMs) return schedule();
            const err = new DfsError('TIMEOUT', `peer ${url} did not answer within ${this.timeoutMs} ms`);
            this.markSkipped(url);
            onTimeout(err);
            reject(err);
          });
          return;
        }
        schedule();
      };
      const schedule = () => {
        if (settled) return;
        conn.probe();
        timer = setTimeout(check, period);
      };
      timer = setTimeout(check, period);
    });
    silent.catch(() => {});
    try {
      return await Promise.race([work, silent]);
    } finally {
      settled = true;
      clearTimeout(timer);
    }
  }

  /** Skips a peer until it is heard from again. */
  markSkipped(url: string): void {
    if (this.skipped.has(url)) return;
    this.log.warn('peer did not answer in time; writes go on without it until it does', { peer: url, timeoutMs: this.timeoutMs });
    const probe = async () => {
      try {
        const conn = await this.peers.get(url);
        conn.probe();
        if (conn.silentMs <= this.timeoutMs / 2) {
          this.skipped.delete(url);
          this.log.info('peer answers again', { peer: url });
          return;
        }
      } catch {
        // not reachable yet
      }
      if (this.skipped.has(url)) this.skipped.set(url, setTimeout(() => void probe(), Math.max(50, this.timeoutMs / 2)).unref());
    };
    this.skipped.set(url, setTimeout(() => void probe(), Math.max(50, this.timeoutMs / 2)).unref());
  }

  close(): void {
    for (const timer of this.skipped.values()) clearTimeout(timer);
    this.skipped.clear();
  }
}
