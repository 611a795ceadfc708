/**
 * Lock floods for scale tests, from a process of its own.
 *
 *   node dist/tests/helpers/lock-flood.js --url URL --role holder --names M [--prefix P]
 *   node dist/tests/helpers/lock-flood.js --url URL --role waiters --sessions N --names M [--prefix P]
 *
 * `holder`: one session takes the M locks `P/0` ... `P/M-1` and prints `holding M`; it holds them
 * until it is killed. `waiters`: N sessions each wait for all M; prints `queued all` once every
 * wait has had its first `queued` event, then `granted=G events=E errors=X` whenever those
 * change (at most every 100 ms). Granted locks are kept.
 */
import { transportFromEnv } from './tls.js';
import { parseArgs } from 'node:util';
import { connect } from '../../shared/rpc.js';
import { toDfsError } from '../../shared/errors.js';

const { values } = parseArgs({
  options: { url: { type: 'string' }, role: { type: 'string' }, sessions: { type: 'string' }, names: { type: 'string' }, prefix: { type: 'string' } },
  strict: true,
});
const url = values.url!;
const names = Array.from({ length: Number(values.names ?? 1000) }, (_, i) => `${values.prefix ?? 'flood'}/${i}`);
const WAIT_MS = 600_000;
const transport = await transportFromEnv();

if (values.role === 'holder') {
  const conn = await connect(url, { transport });
  await conn.call('hello', { client: 'flood-holder' });
  await Promise.all(names.map((name) => conn.call('acquire', { name, timeoutMs: 60_000 }, { timeoutMs: 65_000 })));
  console.log(`holding ${names.length}`);
} else {
  const sessions = Number(values.sessions ?? 100);
  const conns = await Promise.all(Array.from({ length: sessions }, () => connect(url, { transport })));
  await Promise.all(conns.map((conn, i) => conn.call('hello', { client: `flood-waiter-${i}` })));
  let queued = 0;
  let granted = 0;
  let events = 0;
  let errors = 0;
  let lastError = '';
  const total = sessions * names.length;
  for (const conn of conns) {
    for (const name of names) {
      let first = true;
      conn
        .call('acquire', { name, timeoutMs: WAIT_MS }, {
          timeoutMs: WAIT_MS + 5000,
          onEvent: () => {
            events++;
            if (first) {
              first = false;
              if (++queued === total) console.log('queued all');
            }
          },
        })
        .then(
          () => granted++,
          (err: unknown) => {
            errors++;
            lastError = toDfsError(err).message;
          },
        );
    }
  }
  let reported = '';
  setInterval(() => {
    const line = `granted=${granted} events=${events} errors=${errors}${errors ? ` last=${JSON.stringify(lastError)}` : ''}`;
    if (line !== reported) console.log((reported = line));
  }, 100);
}
