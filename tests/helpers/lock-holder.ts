/**
 * A tiny lock client for kill and freeze tests: connects, takes a lock, prints
 * `granted token=N`, then holds it until the process is killed.
 *
 *   node dist/tests/helpers/lock-holder.js --url ws://127.0.0.1:4040 --name notes.txt [--client alice]
 *
 * Prints `queued position=N` while waiting, `session id=ID` after hello, and `error CODE message`
 * (exit 1) when something fails.
 */
import { parseArgs } from 'node:util';
import { connect } from '../../shared/rpc.js';
import { transportFromEnv } from './tls.js';
import { toDfsError } from '../../shared/errors.js';
import type { AcquireResult, HelloResult, QueuedEvent } from '../../shared/protocol.js';

const { values } = parseArgs({
  options: { url: { type: 'string' }, name: { type: 'string' }, client: { type: 'string' }, 'timeout-ms': { type: 'string' } },
  strict: true,
});

try {
  if (!values.url || !values.name) throw new Error('usage: lock-holder --url URL --name NAME [--client LABEL] [--timeout-ms N]');
  const conn = await connect(values.url, { transport: await transportFromEnv() });
  const hello = (await conn.call('hello', { client: values.client ?? 'holder' })).result as HelloResult;
  console.log(`session id=${hello.session}`);
  const timeoutMs = Number(values['timeout-ms'] ?? 30_000);
  const { result } = await conn.call(
    'acquire',
    { name: values.name, timeoutMs },
    { timeoutMs: timeoutMs + 5000, onEvent: (ev, data) => ev === 'queued' && console.log(`queued position=${(data as QueuedEvent).position}`) },
  );
  console.log(`granted token=${(result as AcquireResult).token}`);
  conn.onClose((err) => {
    console.log(`closed ${err.message}`);
    process.exit(1);
  });
  // The open connection keeps the process alive, holding the lock, until it is killed.
} catch (err) {
  const error = toDfsError(err);
  console.log(`error ${error.code} ${error.message}`);
  process.exit(1);
}
