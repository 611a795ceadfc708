/**
 * A client process for lock tests: for each round, locks NAME, appends `begin ID ROUND TOKEN`,
 * holds the lock a while, appends `end ID ROUND TOKEN`, unlocks. The file is then a log that
 * shows whether two clients ever held the lock at once (their lines would interleave).
 *
 *   node dist/tests/helpers/lock-worker.js --directory URL --name NAME --id ID --rounds N [--hold-ms N]
 *
 * Prints `locked round=R token=T`, `begun round=R` (inside the section), `unlocked round=R`,
 * `error round=R CODE message` for a failed round (and goes on), and `done` at the end.
 */
import { transportFromEnv } from './tls.js';
import { parseArgs } from 'node:util';
import { DfsClient } from '../../client/dfs-client.js';
import { toDfsError } from '../../shared/errors.js';

const { values } = parseArgs({
  options: { directory: { type: 'string' }, name: { type: 'string' }, id: { type: 'string' }, rounds: { type: 'string' }, 'hold-ms': { type: 'string' } },
  strict: true,
});
if (!values.directory || !values.name || !values.id) throw new Error('usage: lock-worker --directory URL --name NAME --id ID --rounds N [--hold-ms N]');
const name = values.name;
const id = values.id;
const holdMs = Number(values['hold-ms'] ?? 0);

const client = await DfsClient.connect(values.directory, { transport: await transportFromEnv(), clientName: `worker-${id}` });
for (let round = 1; round <= Number(values.rounds ?? 5); round++) {
  try {
    const lock = await client.lock(name, { timeoutMs: 60_000 });
    console.log(`locked round=${round} token=${lock.token}`);
    try {
      await client.append(name, `begin ${id} ${round} ${lock.token}\n`);
      console.log(`begun round=${round}`);
      // The workload holds the lock a while, so that a fault can land inside the section.
      if (holdMs > 0) await new Promise((resolve) => setTimeout(resolve, holdMs));
      await client.append(name, `end ${id} ${round} ${lock.token}\n`);
    } finally {
      await lock.release();
    }
    console.log(`unlocked round=${round}`);
  } catch (err) {
    const error = toDfsError(err);
    console.log(`error round=${round} ${error.code} ${error.message}`);
  }
}
console.log('done');
client.close();
