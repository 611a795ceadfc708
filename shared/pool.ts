/**
 * One open connection per peer URL, opened on first use and again after it closes. A peer that
 * just refused a connection is not retried for `retryAfterMs`, so that a write does not wait on
 * a dead replica's connect every time.
 */
import { DfsError } from './errors.js';
import { connect, type ConnectOptions, type Expected, type RpcConnection } from './rpc.js';

function matches(conn: RpcConnection, expected: Expected | undefined): boolean {
  return !expected || (conn.service?.role === expected.role && (expected.id === undefined || conn.service.id === expected.id));
}

export class ConnectionPool {
  private readonly open = new Map<string, RpcConnection>();
  private readonly opening = new Map<string, Promise<RpcConnection>>();
  private readonly failedAt = new Map<string, { at: number; error: DfsError }>();
  private closed = false;

  constructor(
    private readonly options: ConnectOptions & {
      retryAfterMs?: number;
      /** Whom every connection must reach unless get() says otherwise. */
      expect?: Expected;
      onConnect?: (conn: RpcConnection, url: string) => Promise<void> | void },
  ) {}

  /**
   * The open connection to url, connecting if needed. UNAVAILABLE if the peer cannot be reached,
   * or if the service there is not `expected` (a server id now at another address, an impostor).
   */
  get(url: string, expected: Expected | undefined = this.options.expect): Promise<RpcConnection> {
    if (this.closed) return Promise.reject(new DfsError('CLOSED', 'connection pool closed'));
    const existing = this.open.get(url);
    if (existing && !existing.closed) {
      if (matches(existing, expected)) return Promise.resolve(existing);
      return Promise.reject(new DfsError('UNAVAILABLE', `the service at ${url} is ${existing.service ? `${existing.service.role} ${existing.service.id}` : 'not a cluster service'}, not ${expected!.role} ${expected!.id ?? ''}`.trimEnd()));
    }
    const pending = this.opening.get(url);
    if (pending) return pending.then((conn) => (matches(conn, expected) ? conn : this.get(url, expected)));
    const failed = this.failedAt.get(url);
    const retryAfterMs = this.options.retryAfterMs ?? 0;
    if (failed && Date.now() - failed.at < retryAfterMs) return Promise.reject(failed.error);
    const attempt = (async () => {
      try {
        const conn = await connect(url, this.options, expected);
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
