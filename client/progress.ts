/**
 * A progress bar on stderr for transfers of about a megabyte or more, when stderr is a terminal.
 * cli-progress is imported only when a bar is due, so that small commands start fast; updates
 * that arrive while it loads are folded into the bar's first frame.
 */
import type { SingleBar } from 'cli-progress';
import { formatSize } from './format.js';

export const PROGRESS_MIN_BYTES = 1 << 20;

export interface Progress {
  update(done: number, total: number): void;
  stop(): void;
}

export function progressBar(label: string): Progress {
  let bar: SingleBar | null = null;
  let loading = false;
  let stopped = false;
  let latest = 0;
  return {
    update(done, total) {
      latest = done;
      if (bar) return bar.update(done, { done: formatSize(done) });
      if (loading || stopped || total < PROGRESS_MIN_BYTES || !process.stderr.isTTY) return;
      loading = true;
      void import('cli-progress').then(({ default: cliProgress }) => {
        if (stopped) return;
        bar = new cliProgress.SingleBar(
          {
            stream: process.stderr,
            format: `${label} [{bar}] {percentage}% | {done} of ${formatSize(total)} | {eta_formatted} left`,
            hideCursor: true,
            barsize: 30,
            fps: 10,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, latest, { done: formatSize(latest) });
      });
    },
    stop() {
      if (stopped) return;
      stopped = true;
      bar?.stop();
    },
  };
}
