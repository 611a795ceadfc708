/**
 * Measures how punctual a service's pings are: a bare WebSocket client (it never pings; ws answers
 * the service's pings by itself) that records the time between consecutive pings received.
 * The lateness it sees is the service's plus its own, on a loaded machine.
 *
 *   node dist/tests/helpers/ping-probe.js --url URL
 *
 * Prints `connected`, then `pings=N max=MS p99=MS` every second.
 */
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { WebSocket } from 'ws';

const { values } = parseArgs({ options: { url: { type: 'string' } }, strict: true });
const ws = new WebSocket(values.url!, process.env.DFS_CA ? { ca: readFileSync(process.env.DFS_CA) } : {});
const gaps: number[] = [];
let last = 0;
ws.on('open', () => {
  console.log('connected');
  last = performance.now();
});
ws.on('ping', () => {
  const now = performance.now();
  gaps.push(now - last);
  last = now;
});
ws.on('close', () => {
  console.log('closed');
  process.exit(1);
});
setInterval(() => {
  if (gaps.length === 0) return;
  const sorted = [...gaps].sort((a, b) => a - b);
  const p99 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))]!;
  console.log(`pings=${gaps.length} max=${sorted.at(-1)!.toFixed(0)} p99=${p99.toFixed(0)}`);
}, 1000);
