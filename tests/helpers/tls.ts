/**
 * Certificates for tests: a cluster CA and service certificates in a folder, the flags that
 * give a service process its certificate, and the transports test code connects with.
 *
 * Spawned helper processes (lock-holder.ts and the like) find the CA in $DFS_CA, as clients do.
 */
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { CA_CERT_FILE, certPaths, ensureCa, ensureServiceCert } from '../../shared/tls/certs.js';
import type { ServiceIdentity } from '../../shared/tls/identity.js';
import type { Transport } from '../../shared/tls/transport.js';

export const TEST_HOSTS = ['127.0.0.1', 'localhost'];

export class TestPki {
  private constructor(
    readonly dir: string,
    readonly caPem: string,
  ) {}

  /** A CA in `dir` (made if missing) and a certificate for each identity. */
  static async make(dir: string, identities: readonly ServiceIdentity[]): Promise<TestPki> {
    const ca = await ensureCa(dir);
    const pki = new TestPki(dir, ca.certPem);
    for (const identity of identities) await ensureServiceCert(dir, ca, identity, TEST_HOSTS);
    return pki;
  }

  /** Issues the certificate of one more service. */
  async add(identity: ServiceIdentity): Promise<void> {
    const ca = await ensureCa(this.dir);
    await ensureServiceCert(this.dir, ca, identity, TEST_HOSTS);
  }

  get caPath(): string {
    return join(this.dir, CA_CERT_FILE);
  }

  /** --ca, --cert and --key for a service process. */
  flags(id: string): string[] {
    const paths = certPaths(this.dir, id);
    return ['--ca', this.caPath, '--cert', paths.cert, '--key', paths.key];
  }

  /** What a user's client connects with: the CA, no certificate of its own. */
  get client(): Transport {
    return { kind: 'tls', ca: this.caPem };
  }

  /** What a service connects with: the CA and its certificate (to pose as it in a test). */
  async as(id: string): Promise<Transport> {
    const paths = certPaths(this.dir, id);
    const [cert, key] = await Promise.all([readFile(paths.cert, 'utf8'), readFile(paths.key, 'utf8')]);
    return { kind: 'tls', ca: this.caPem, cert, key };
  }
}

/** The transport of a spawned test helper: TLS with $DFS_CA when it is set, else plain ws://. */
export async function transportFromEnv(env: NodeJS.ProcessEnv = process.env): Promise<Transport> {
  if (!env.DFS_CA) return { kind: 'insecure' };
  return { kind: 'tls', ca: await readFile(env.DFS_CA, 'utf8') };
}

let shared: Promise<TestPki> | null = null;

/**
 * One CA for the tests of this process that run services on their own (not in a Cluster): with
 * the certificates of the lock service, the directory and file servers fs-1..fs-3 (add() others).
 * Its folder is removed when the process exits.
 */
export function sharedPki(): Promise<TestPki> {
  shared ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dfs-pki-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    return TestPki.make(dir, [
      { role: 'lock', id: 'lock' },
      { role: 'directory', id: 'directory' },
      ...[1, 2, 3].map((i) => ({ role: 'file-server' as const, id: `fs-${i}` })),
    ]);
  })();
  return shared;
}
