/**
 * The cluster's certificate authority and the service certificates it issues, made with
 * @peculiar/x509 (a maintained, typed X.509 builder over WebCrypto: ECDSA P-256 keys in
 * milliseconds, no OpenSSL binary needed). Node's own crypto and TLS verify them.
 *
 * A TLS folder (`data/tls` under `npm start`) holds:
 *
 *     ca.crt  ca.key          the cluster CA (ca.key never leaves this folder; mode 0600)
 *     directory.crt/.key      the directory service
 *     lock.crt/.key           the lock service
 *     fs-1.crt/.key ...       each file server, by id
 *
 * Keys are written with mode 0600, durably (temp file, fsync, rename).
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { KeyObject, X509Certificate, createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { PRIVATE_FILE_MODE, readIfExists, writeFileDurably } from '../durable.js';
import { DfsError } from '../errors.js';
import { identityOfCertificate, subjectOf, type ServiceIdentity } from './identity.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
const CA_DAYS = 3650;
const SERVICE_DAYS = 730;
/** A service certificate this close to expiry is issued again at the next start. */
const RENEW_BEFORE_DAYS = 30;
/** Ids a file server may not have: their certificate files would clash with these. */
export const RESERVED_IDS = new Set(['ca', 'directory', 'lock']);

export const CA_CERT_FILE = 'ca.crt';
export const CA_KEY_FILE = 'ca.key';

export interface Pem {
  certPem: string;
  keyPem: string;
}

export interface CertPaths {
  cert: string;
  key: string;
}

export function certPaths(tlsDir: string, id: string): CertPaths {
  return { cert: join(tlsDir, `${id}.crt`), key: join(tlsDir, `${id}.key`) };
}

/** The names a host may be reached by that a service certificate should carry by default. */
export function defaultHosts(): string[] {
  return ['localhost', '127.0.0.1', '::1', hostname()];
}

function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = bytes[0]! & 0x7f; // positive
  return bytes.toString('hex');
}

async function keyPemOf(key: CryptoKey): Promise<string> {
  return KeyObject.from(key).export({ type: 'pkcs8', format: 'pem' }).toString();
}

async function importSigningKey(keyPem: string): Promise<CryptoKey> {
  const der = createPrivateKey(keyPem).export({ type: 'pkcs8', format: 'der' });
  return webcrypto.subtle.importKey('pkcs8', der, ALGORITHM, false, ['sign']);
}

/** A new self-signed cluster CA. */
export async function createCa(name = 'dfs cluster CA'): Promise<Pem> {
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: `CN=${name}, O=dfs`,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + CA_DAYS * DAY_MS),
    keys,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await keyPemOf(keys.privateKey) };
}

/**
 * A self-signed certificate naming `identity`, signed by its own new key: for a service that
 * runs without a CA (--insecure) but still needs a key pair and a certificate to show for it.
 */
export async function createSelfSignedServiceCert(identity: ServiceIdentity, days = SERVICE_DAYS): Promise<Pem> {
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: subjectOf(identity),
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + days * DAY_MS),
    keys,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await keyPemOf(keys.privateKey) };
}

/** A certificate for one service, valid for TLS as server and as client, for the given hosts. */
export async function issueServiceCert(ca: Pem, identity: ServiceIdentity, hosts: readonly string[], days = SERVICE_DAYS): Promise<Pem> {
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
  const caCert = new x509.X509Certificate(ca.certPem);
  const now = Date.now();
  const names = [...new Set(hosts)].map((host) => (isIP(host) ? { type: 'ip' as const, value: host } : { type: 'dns' as const, value: host }));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: subjectOf(identity),
    issuer: caCert.subject,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + days * DAY_MS),
    signingKey: await importSigningKey(ca.keyPem),
    publicKey: keys.publicKey,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension(names),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await keyPemOf(keys.privateKey) };
}

async function writeKey(path: string, pem: string): Promise<void> {
  await writeFileDurably(path, pem, { mode: PRIVATE_FILE_MODE });
}

/** The CA in `tlsDir`, made there first if it has none. `created` says whether it was. */
export async function ensureCa(tlsDir: string): Promise<Pem & { created: boolean }> {
  const certPem = await readIfExists(join(tlsDir, CA_CERT_FILE));
  const keyPem = await readIfExists(join(tlsDir, CA_KEY_FILE));
  if (certPem && keyPem) return { certPem: certPem.toString(), keyPem: keyPem.toString(), created: false };
  if (certPem || keyPem) {
    throw new DfsError('BAD_REQUEST', `${tlsDir} has one of ${CA_CERT_FILE} and ${CA_KEY_FILE} but not the other; restore the missing one, or move both away to make a new CA (every certificate must then be issued again)`);
  }
  const ca = await createCa();
  await writeKey(join(tlsDir, CA_KEY_FILE), ca.keyPem);
  await writeFileDurably(join(tlsDir, CA_CERT_FILE), ca.certPem);
  return { ...ca, created: true };
}

/** Why an existing certificate must be issued again, or null when it will do. */
export function reissueReason(certPem: string, caPem: string, identity: ServiceIdentity, hosts: readonly string[], now = Date.now()): string | null {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch {
    return 'it cannot be read';
  }
  const ca = new X509Certificate(caPem);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return 'another CA issued it';
  const named = identityOfCertificate(cert);
  if (!named || named.role !== identity.role || named.id !== identity.id) return 'it names another service';
  if (Date.parse(cert.validTo) - now < RENEW_BEFORE_DAYS * DAY_MS) return 'it expires soon';
  for (const host of hosts) {
    const covered = isIP(host) ? cert.checkIP(host) !== undefined : cert.checkHost(host) !== undefined;
    if (!covered) return `it does not name ${host}`;
  }
  return null;
}

/**
 * The certificate and key of `identity` in `tlsDir`, issued there by its CA if missing, about to
 * expire, or not naming every one of `hosts`. Returns the paths and whether it was issued now.
 */
export async function ensureServiceCert(tlsDir: string, ca: Pem, identity: ServiceIdentity, hosts: readonly string[]): Promise<CertPaths & { issued: string | null }> {
  const paths = certPaths(tlsDir, identity.id);
  const existing = await readIfExists(paths.cert);
  const key = await readIfExists(paths.key);
  const reason = existing && key ? reissueReason(existing.toString(), ca.certPem, identity, hosts) : 'there is none';
  if (reason === null) return { ...paths, issued: null };
  const pem = await issueServiceCert(ca, identity, hosts);
  await writeKey(paths.key, pem.keyPem);
  await writeFileDurably(paths.cert, pem.certPem);
  return { ...paths, issued: reason };
}
