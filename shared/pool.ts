/**
 * One open connection per peer URL, opened on first use and again after it closes. A peer that
 * just refused a connection is not retried for `retryAfterMs`, so that a write does not wait on
 * a dead replica's connect every time.
 */
import { DfsError } from './errors.js';
import { connect, type ConnectOptions, type RpcConnection } from './rpc.js';

export class ConnectionPool {
  private readonly open = new Map<string, RpcConnection>();
  private readonly opening = new Map<string, Promise<RpcConnection>>();
  private readonly failedAt = new Map<string, { at: number; error: DfsError }>();
  private closed = false;

  constructor(
    private readonly options: ConnectOptions & { retryAfterMs?: number; onConnect?: (conn: RpcConnection, url: string) => Promise<void> | void } = {},
  ) {}

  /** The open connection to url, connecting if needed. UNAVAILABLE if the peer cannot be reached. */
  get(url: string): Promise<RpcConnection> {
    if (this.closed) return Promise.reject(new DfsError('CLOSED', 'connection pool closed'));
    const existing = this.open.get(url);
    if (existing && !existing.closed) return Promise.resolve(existing);
    const pending = this.opening.get(url);
    if (pending) return pending;
    const failed = this.failedAt.get(url);
    const retryAfterMs = this.options.retryAfterMs ?? 0;
    if (failed && Date.now() - failed.at < retryAfterMs) return Promise.reject(failed.error);
    const attempt = (async () => {
      try {
        const conn = await connect(url, this.options);
        try {
          if (this.options.onConnect) await this.options.onConnect(conn, url);
        } catch (err) {
          conn.close(); // a connection its greeting failed on is of no use
          throw err;
        }
        if (this.closed) {
          conn.close();
          throw new DfsError('CLOSED', 'connection pool closed');
        }
        this.open.set(url, conn);
        this.failedAt.delete(url);
        conn.onClose(() => {
          if (this.open.get(url) === conn) this.open.delete(url);
        });
        return conn;
      } catch (err) {
        const error = err instanceof DfsError ? err : new DfsError('UNAVAILABLE', `cannot reach ${url}: ${String(err)}`);
        this.failedAt.set(url, { at: Date.now(), error });
        throw error;
      } finally {
        this.opening.delete(url);
      }
    })();
    this.opening.set(url, attempt);
    return attempt;
  }

  closeAll(): void {
    this.closed = true;
    for (const conn of this.open.values()) conn.close();
    this.open.clear();
  }
}
