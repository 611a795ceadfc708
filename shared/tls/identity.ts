/**
 * Who a certificate says its holder is. Every certificate the cluster CA issues names one
 * service: `CN=<id>, OU=<role>, O=dfs`. Only the CA can issue one, so a peer whose certificate
 * TLS verified against the cluster CA is that service, whatever its messages claim.
 */
import type { PeerCertificate } from 'node:tls';
import type { X509Certificate } from 'node:crypto';

export const SERVICE_ROLES = ['directory', 'lock', 'file-server'] as const;
export type ServiceRole = (typeof SERVICE_ROLES)[number];

/** The organisation every cluster certificate names. */
export const CLUSTER_ORG = 'dfs';

export interface ServiceIdentity {
  role: ServiceRole;
  /** A file server's id; `directory` and `lock` for those services. */
  id: string;
}

export function isServiceRole(value: unknown): value is ServiceRole {
  return typeof value === 'string' && (SERVICE_ROLES as readonly string[]).includes(value);
}

/** The subject line of a service certificate. */
export function subjectOf(identity: ServiceIdentity): string {
  return `CN=${identity.id}, OU=${identity.role}, O=${CLUSTER_ORG}`;
}

/** The identity a TLS peer certificate names, or null when it names none of ours. */
export function identityOfPeer(cert: PeerCertificate | null | undefined): ServiceIdentity | null {
  if (!cert || !cert.subject) return null;
  const { CN, OU, O } = cert.subject as unknown as Record<string, string | string[] | undefined>;
  if (typeof CN !== 'string' || typeof OU !== 'string' || O !== CLUSTER_ORG || !isServiceRole(OU)) return null;
  return { role: OU, id: CN };
}

/** The identity an X509Certificate names (its subject is `CN=..\nOU=..\nO=..`), or null. */
export function identityOfCertificate(cert: X509Certificate): ServiceIdentity | null {
  const fields = new Map<string, string[]>();
  for (const line of cert.subject.split('\n')) {
    const at = line.indexOf('=');
    if (at <= 0) continue;
    const key = line.slice(0, at);
    fields.set(key, [...(fields.get(key) ?? []), line.slice(at + 1)]);
  }
  const one = (key: string) => (fields.get(key)?.length === 1 ? fields.get(key)![0]! : null);
  const role = one('OU');
  const id = one('CN');
  if (one('O') !== CLUSTER_ORG || !isServiceRole(role) || id === null) return null;
  return { role, id };
}

export function describeIdentity(identity: ServiceIdentity | null): string {
  return identity ? `${identity.role} ${identity.id}` : 'no cluster certificate';
}
