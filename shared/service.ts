/**
 * The shell every service main runs in: start, log, and on SIGINT/SIGTERM stop cleanly (finish
 * or refuse what is in flight, flush state) and exit 0. A failure to start is one line and exit 1.
 */
import { DfsError } from './errors.js';
import type { Logger } from './log.js';

export interface RunningService {
  /** Stops serving and flushes state; resolves when it is safe to exit. */
  close(): Promise<void>;
}

export async function runService(log: Logger, start: () => Promise<RunningService>): Promise<void> {
  let service: RunningService;
  try {
    service = await start();
  } catch (err) {
    const message = err instanceof DfsError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err);
    log.error('failed to start', { error: message });
    process.exitCode = 1;
    return;
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('stopping', { signal });
    const force = setTimeout(() => {
      log.error('shutdown took too long; exiting');
      process.exit(1);
    }, 10_000);
    force.unref();
    service.close().then(
      () => {
        log.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        log.error('shutdown failed', { error: err instanceof Error ? err.message : String(err) });
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('uncaughtException', (err) => {
    log.error('uncaught exception', { error: err.stack ?? err.message });
    process.exit(1);
  });
  process.on('unhandledRejection', (err) => {
    log.error('unhandled rejection', { error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    process.exit(1);
  });
}
