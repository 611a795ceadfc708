/**
 * `dfs rebalance`: moves primaries (and so write load) toward an even spread over the live
 * servers, by handing each moved file to one of its own in-sync replicas (the same fenced change
 * as a failover, with the old primary up). Only on request: a server that joins takes new files
 * by itself (creates pick the server with the fewest primaries), and moving existing primaries
 * costs each moved file a short pause in its writes, which an operator should choose to pay.
 */
import { compareIds } from './cluster.js';
import type { NamedEntry } from './placement-changes.js';

/**
 * Which files to move where: from servers above the average to replicas below it, a file moving
 * only when that narrows the gap (the receiver ends with fewer primaries than the giver had).
 * Returns, per giving server, file name → receiving server.
 */
export function planRebalance(
  files: Iterable<NamedEntry>,
  servers: readonly string[],
  canTake: (id: string, name: string) => boolean,
): Map<string, Map<string, string>> {
  const count = new Map(servers.map((id) => [id, 0]));
  const owned: NamedEntry[] = [];
  for (const file of files) {
    const primary = file[1].primary;
    if (!count.has(primary)) continue;
    count.set(primary, count.get(primary)! + 1);
    owned.push(file);
  }
  const total = [...count.values()].reduce((a, b) => a + b, 0);
  const high = Math.ceil(total / Math.max(1, servers.length));
  const plan = new Map<string, Map<string, string>>();
  for (const [name, entry] of owned) {
    const from = entry.primary;
    if (count.get(from)! <= high) continue;
    let to: string | null = null;
    for (const id of entry.replicas) {
      const c = count.get(id);
      if (c === undefined || c + 1 >= count.get(from)! || !canTake(id, name)) continue;
      if (to === null || c < count.get(to)! || (c === count.get(to)! && compareIds(id, to) < 0)) to = id;
    }
    if (to === null) continue;
    count.set(from, count.get(from)! - 1);
    count.set(to, count.get(to)! + 1);
    let moves = plan.get(from);
    if (!moves) plan.set(from, (moves = new Map()));
    moves.set(name, to);
  }
  return plan;
}
