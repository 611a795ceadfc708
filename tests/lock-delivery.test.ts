/**
 * Batched delivery: bounded batches, FIFO order, a yield between batches. The scheduler is
 * injected, so a "yield" is a step the test takes.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { BatchedDelivery } from '../servers/lock/delivery.js';

const test = suite('lock-delivery');

function manualScheduler() {
  const queue: Array<() => void> = [];
  return {
    schedule: (run: () => void) => void queue.push(run),
    /** Runs one scheduled turn; false when nothing was scheduled. */
    step(): boolean {
      const run = queue.shift();
      run?.();
      return run !== undefined;
    },
    get waiting() {
      return queue.length;
    },
  };
}

test('delivers in FIFO order, at most one batch per turn', () => {
  const delivered: number[] = [];
  const scheduler = manualScheduler();
  const delivery = new BatchedDelivery<number>((n) => delivered.push(n), 100, scheduler.schedule);
  for (let i = 0; i < 1050; i++) delivery.push(i);
  assert.is(delivered.length, 0, 'nothing is delivered inside push');
  assert.is(scheduler.waiting, 1, 'one turn scheduled, however many pushes');
  const perTurn: number[] = [];
  while (scheduler.step()) perTurn.push(delivered.length);
  assert.equal(perTurn, [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1050]);
  assert.equal(delivered, Array.from({ length: 1050 }, (_, i) => i));
  assert.is(delivery.pending, 0);
});

test('items pushed while a batch runs go after the ones before them', () => {
  const delivered: string[] = [];
  const scheduler = manualScheduler();
  const delivery: BatchedDelivery<string> = new BatchedDelivery<string>(
    (item) => {
      delivered.push(item);
      if (item === 'a') delivery.push('c');
    },
    10,
    scheduler.schedule,
  );
  delivery.push('a');
  delivery.push('b');
  while (scheduler.step());
  assert.equal(delivered, ['a', 'b', 'c']);
});

test('an item that throws is reported and the rest still go out', () => {
  const delivered: number[] = [];
  const errors: unknown[] = [];
  const scheduler = manualScheduler();
  const delivery = new BatchedDelivery<number>(
    (n) => {
      if (n === 2) throw new Error('boom');
      delivered.push(n);
    },
    10,
    scheduler.schedule,
    (err) => errors.push(err),
  );
  for (let i = 0; i < 5; i++) delivery.push(i);
  while (scheduler.step());
  assert.equal(delivered, [0, 1, 3, 4]);
  assert.is(errors.length, 1);
  delivery.push(9);
  while (scheduler.step());
  assert.equal(delivered.at(-1), 9, 'still delivering afterwards');
});

test('with the default scheduler, other callbacks run between two batches', async () => {
  const order: string[] = [];
  const delivery = new BatchedDelivery<number>((n) => order.push(`item ${n}`), 2);
  for (let i = 0; i < 6; i++) delivery.push(i);
  // Queued after the first batch's turn, so it runs before the second batch's.
  setImmediate(() => order.push('other'));
  while (delivery.pending > 0) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(order, ['item 0', 'item 1', 'other', 'item 2', 'item 3', 'item 4', 'item 5']);
});

test.run();
