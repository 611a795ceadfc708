/**
 * Checks that a request comes from the cluster service allowed to make it, by the identity its
 * connection's certificate proved (shared/tls/identity.ts), never by what the request says.
 */
import { DfsError } from '../errors.js';
import type { RpcConnection } from '../rpc/connection.js';
import type { ServiceIdentity, ServiceRole } from '../tls/identity.js';

const roleNames: Record<ServiceRole, string> = { directory: 'the directory', lock: 'the lock service', 'file-server': 'a file server' };

/**
 * The connection's service identity when it is `role` (and `id`, when given). UNAUTHENTICATED
 * for a connection with no cluster certificate, FORBIDDEN for one of another service.
 */
export function requireService(conn: RpcConnection, op: string, role: ServiceRole, id?: string): ServiceIdentity {
  const service = conn.service;
  if (!service) throw new DfsError('UNAUTHENTICATED', `${op} is for ${roleNames[role]} only, and this connection has no cluster certificate`);
  if (service.role !== role) throw new DfsError('FORBIDDEN', `${op} is for ${roleNames[role]} only, not for ${roleNames[service.role]}`);
  if (id !== undefined && service.id !== id) throw new DfsError('FORBIDDEN', `this connection's certificate is ${service.id}'s, so it cannot act as ${id}`);
  return service;
}
