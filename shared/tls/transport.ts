/**
 * How a process's connections are made: TLS with the cluster CA (the default), or plain
 * WebSocket when every process runs with --insecure.
 *
 * - TLS: clients verify the server's certificate against the cluster CA and its name against
 *   the URL's host (Node's default check). A service also presents its own certificate when it
 *   connects to another (mutual TLS), and asks its peers for theirs: a peer whose certificate
 *   the CA issued is that service (identity.ts); a peer with none is a user's client, which
 *   must then authenticate with a session.
 * - Insecure: plain ws://, readable by anyone on the path, and a peer's identity is only what
 *   it claims in the `x-dfs-service` header. For debugging on one machine, never for real data.
 *
 * The two never mix: a TLS process refuses ws:// URLs and an insecure one refuses wss://, each
 * with a message saying what to change.
 */
import { readFile } from 'node:fs/promises';
import { X509Certificate } from 'node:crypto';
import { DfsError } from '../errors.js';
import { describeIdentity, identityOfCertificate, isServiceRole, type ServiceIdentity } from './identity.js';

/** The header an insecure service puts on its connections to say which service it is. */
export const SERVICE_CLAIM_HEADER = 'x-dfs-service';

export interface TlsTransport {
  kind: 'tls';
  /** The cluster CA certificate (PEM). */
  ca: string;
  /** This process's own certificate and key (services only). */
  cert?: string;
  key?: string;
  /** Who `cert` says this process is. */
  identity?: ServiceIdentity;
}

export interface InsecureTransport {
  kind: 'insecure';
  /** Who this process says it is (services only), sent in the clear and believed. */
  identity?: ServiceIdentity;
}

export type Transport = TlsTransport | InsecureTransport;

export const INSECURE: InsecureTransport = { kind: 'insecure' };

export function schemeOf(transport: Transport): 'wss' | 'ws' {
  return transport.kind === 'tls' ? 'wss' : 'ws';
}

/** BAD_REQUEST unless url's scheme is the one this transport speaks. */
export function checkScheme(url: string, transport: Pick<Transport, 'kind'>): void {
  const scheme = new URL(url).protocol;
  if (transport.kind === 'tls' && scheme === 'ws:') {
    throw new DfsError('BAD_REQUEST', `${url} is plain ws://, which this process refuses: use wss:// (or run every process with --insecure)`);
  }
  if (transport.kind === 'insecure' && scheme === 'wss:') {
    throw new DfsError('BAD_REQUEST', `${url} is wss:// but this process runs with --insecure (plain ws://); drop --insecure and give it the cluster CA with --ca`);
  }
}

export function formatClaim(identity: ServiceIdentity): string {
  return `${identity.role}/${identity.id}`;
}

export function parseClaim(text: string | string[] | undefined): ServiceIdentity | null {
  if (typeof text !== 'string' || text.length > 64) return null;
  const at = text.indexOf('/');
  const role = text.slice(0, at);
  const id = text.slice(at + 1);
  return at > 0 && isServiceRole(role) && /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/.test(id) ? { role, id } : null;
}

export interface TransportFlags {
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
  insecure?: boolean | undefined;
}

async function readPem(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new DfsError('BAD_REQUEST', `cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/**
 * A service's transport from its flags: the CA, its certificate and key, which must name
 * `expected` and be issued by the CA. Insecure when --insecure is given (and then no files).
 */
export async function serviceTransport(flags: TransportFlags, expected: ServiceIdentity): Promise<Transport> {
  if (flags.insecure) {
    if (flags.ca || flags.cert || flags.key) throw new DfsError('BAD_REQUEST', '--insecure turns TLS off: give it without --ca, --cert and --key');
    return { kind: 'insecure', identity: expected };
  }
  if (!flags.ca || !flags.cert || !flags.key) {
    throw new DfsError(
      'BAD_REQUEST',
      `this service talks TLS and needs --ca, --cert and --key (npm start makes them under DATA/tls; npm run cert -- issue makes one for another machine), or --insecure on every process for plain ws://`,
    );
  }
  const [ca, cert, key] = await Promise.all([readPem(flags.ca, 'the CA certificate'), readPem(flags.cert, 'the certificate'), readPem(flags.key, 'the key')]);
  let parsed: X509Certificate;
  let caCert: X509Certificate;
  try {
    parsed = new X509Certificate(cert);
    caCert = new X509Certificate(ca);
  } catch (err) {
    throw new DfsError('BAD_REQUEST', `${flags.cert} or ${flags.ca} is not a PEM certificate: ${(err as Error).message}`);
  }
  if (!parsed.checkIssued(caCert) || !parsed.verify(caCert.publicKey)) throw new DfsError('BAD_REQUEST', `${flags.cert} was not issued by the CA in ${flags.ca}`);
  const identity = identityOfCertificate(parsed);
  if (!identity || identity.role !== expected.role || identity.id !== expected.id) {
    throw new DfsError('BAD_REQUEST', `${flags.cert} is the certificate of ${describeIdentity(identity)}, not of ${describeIdentity(expected)}`);
  }
  if (Date.parse(parsed.validTo) < Date.now()) throw new DfsError('BAD_REQUEST', `${flags.cert} expired on ${parsed.validTo}; issue a new one (npm start does at its next start)`);
  return { kind: 'tls', ca, cert, key, identity };
}
