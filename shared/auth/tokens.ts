/**
 * Signed tickets and capabilities, so that the lock service and the file servers can tell who a
 * client is and what it may do without asking the directory (as Kerberos tickets do for NFS).
 * The directory signs them with the private key of its cluster certificate; the others verify
 * them with that certificate, which they trust only if the cluster CA issued it to the directory.
 *
 *     t1.<base64url(JSON claims)>.<base64url(ECDSA P-256 SHA-256 signature, IEEE-P1363)>
 *
 * The signature covers the ASCII bytes `t1.<claims part>`. Every token names its signer (`kid`,
 * the first 32 hex digits of the sha256 of the signer certificate's DER), when it was issued and
 * when it expires (`iat`, `exp`, ms since the epoch).
 *
 * - A ticket says who the bearer is (and the login session it came from, `sid`, so that a
 *   revocation can name it).
 * - A capability says what `user` may do to one incarnation (`epoch`) of one file: read, or write
 *   (which includes read).
 *
 * Tokens are bearer credentials: whoever holds one may use it until it expires, so keep them
 * short-lived and only send them over TLS. Verification is cheap: a token already verified once
 * costs a cache lookup, not a signature check.
 */
import { LRUCache } from 'lru-cache';
import { X509Certificate, createHash, createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { DfsError } from '../errors.js';
import { nameProblem } from '../names.js';
import { createSelfSignedServiceCert } from '../tls/certs.js';
import { identityOfCertificate } from '../tls/identity.js';

/** Longest token accepted; anything longer is refused before it is parsed. */
export const MAX_TOKEN_CHARS = 4096;
const VERSION = 't1';
const TOKEN_PATTERN = /^t1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
/** An IEEE-P1363 P-256 signature: r and s, 32 bytes each. */
const SIGNATURE_BYTES = 64;
export const DEFAULT_SKEW_MS = 30_000;
/** Signer certificates a verifier remembers; the oldest trusted is forgotten first. */
export const MAX_SIGNERS = 16;
/** Verified tokens a verifier remembers, so that a repeated token costs no signature check. */
export const VERIFIED_CACHE_SIZE = 10_000;

// ---------------------------------------------------------------- claims

/** A token on the wire, as an op's argument schema should accept it. */
export const tokenText = z
  .string()
  .min(16)
  .max(MAX_TOKEN_CHARS)
  .regex(TOKEN_PATTERN, 'expected a t1.<claims>.<signature> token');

const kid = z.string().regex(/^[0-9a-f]{32}$/, 'expected 32 lowercase hex digits');
const time = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const userName = z
  .string()
  .min(1)
  .max(255)
  .refine((value) => value.isWellFormed(), 'must be well-formed Unicode');
const sessionId = z.string().min(1).max(128);
const fileName = z.string().superRefine((value, ctx) => {
  const problem = nameProblem(value);
  if (problem !== null) ctx.addIssue({ code: 'custom', message: problem });
});
const access = z.enum(['read', 'write']);
export type Access = z.infer<typeof access>;

const ticketFields = z.object({ user: userName, admin: z.boolean(), sid: sessionId }).strict();
const capabilityFields = z.object({ user: userName, name: fileName, epoch: time, access }).strict();

const issued = { kid, iat: time, exp: time };
const ticketClaims = z.object({ kind: z.literal('ticket'), ...issued, ...ticketFields.shape });
const capabilityClaims = z.object({ kind: z.literal('cap'), ...issued, ...capabilityFields.shape });
// Unknown keys are dropped, not refused, so that a newer directory may add claims.
const claims = z.discriminatedUnion('kind', [ticketClaims, capabilityClaims]).refine((c) => c.exp > c.iat, 'exp must be after iat');

export type TicketFields = z.infer<typeof ticketFields>;
export type CapabilityFields = z.infer<typeof capabilityFields>;
export type TicketClaims = z.infer<typeof ticketClaims>;
export type CapabilityClaims = z.infer<typeof capabilityClaims>;
type Claims = TicketClaims | CapabilityClaims;

export interface SignedToken {
  token: string;
  /** `exp`: ms since the epoch. */
  expiresAt: number;
}

/** The signer id of a certificate: the first 32 hex digits of the sha256 of its DER. */
export function kidOf(cert: string | X509Certificate): string {
  const parsed = typeof cert === 'string' ? new X509Certificate(cert) : cert;
  return createHash('sha256').update(parsed.raw).digest('hex').slice(0, 32);
}

function isP256(key: KeyObject): boolean {
  return key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
}

function problemOf(error: z.ZodError): string {
  const issue = error.issues[0];
  return issue ? `${issue.path.join('.') || 'claims'}: ${issue.message}` : 'bad shape';
}

// ---------------------------------------------------------------- signing

export interface SignerOptions {
  /** The clock, ms since the epoch; Date.now unless a test says otherwise. */
  now?: () => number;
}

/** Signs tickets and capabilities with a P-256 key and names its certificate in each. */
export class TokenSigner {
  readonly kid: string;
  readonly certPem: string;
  private readonly key: KeyObject;
  private readonly now: () => number;

  constructor(keyPem: string, certPem: string, options: SignerOptions = {}) {
    let cert: X509Certificate;
    try {
      this.key = createPrivateKey(keyPem);
      cert = new X509Certificate(certPem);
    } catch (err) {
      throw new DfsError('BAD_REQUEST', `cannot read the token signing key or certificate: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (!isP256(this.key)) throw new DfsError('BAD_REQUEST', 'the token signing key must be an ECDSA P-256 key');
    const spki = (key: KeyObject) => key.export({ type: 'spki', format: 'der' });
    if (!spki(createPublicKey(this.key)).equals(spki(cert.publicKey))) {
      throw new DfsError('BAD_REQUEST', 'the token signing key does not belong to the certificate given with it');
    }
    this.kid = kidOf(cert);
    this.certPem = certPem;
    this.now = options.now ?? Date.now;
  }

  /** A ticket: `user` (an admin or not) logged in, in session `sid`. */
  ticket(fields: TicketFields, lifetimeMs: number): SignedToken {
    const { user, admin, sid } = this.checked(ticketFields, fields);
    return this.issue(lifetimeMs, (head) => ({ kind: 'ticket', ...head, user, admin, sid }));
  }

  /** A capability: `user` may `access` file `name` at incarnation `epoch`. */
  capability(fields: CapabilityFields, lifetimeMs: number): SignedToken {
    const { user, name, epoch, access } = this.checked(capabilityFields, fields);
    return this.issue(lifetimeMs, (head) => ({ kind: 'cap', ...head, user, name, epoch, access }));
  }

  private checked<T>(schema: z.ZodType<T>, fields: unknown): T {
    const result = schema.safeParse(fields);
    if (!result.success) throw new DfsError('BAD_REQUEST', `cannot sign a token for these fields: ${problemOf(result.error)}`);
    return result.data;
  }

  private issue(lifetimeMs: number, build: (head: { kid: string; iat: number; exp: number }) => Claims): SignedToken {
    if (!Number.isSafeInteger(lifetimeMs) || lifetimeMs <= 0) throw new DfsError('BAD_REQUEST', `a token lifetime must be a positive whole number of ms, not ${lifetimeMs}`);
    const iat = this.now();
    const exp = iat + lifetimeMs;
    const signed = `${VERSION}.${Buffer.from(JSON.stringify(build({ kid: this.kid, iat, exp }))).toString('base64url')}`;
    const signature = sign('sha256', Buffer.from(signed, 'ascii'), { key: this.key, dsaEncoding: 'ieee-p1363' });
    const token = `${signed}.${signature.toString('base64url')}`;
    if (token.length > MAX_TOKEN_CHARS) throw new DfsError('TOO_LARGE', `the token would be ${token.length} characters, over the ${MAX_TOKEN_CHARS}-character limit`);
    return { token, expiresAt: exp };
  }
}

/**
 * A signer for --insecure mode: a fresh key and a self-signed certificate naming the directory.
 * Verifiers without a CA accept it, and would accept anyone else's just the same.
 */
export async function makeInsecureSigner(options: SignerOptions = {}): Promise<TokenSigner> {
  const pem = await createSelfSignedServiceCert({ role: 'directory', id: 'directory' });
  return new TokenSigner(pem.keyPem, pem.certPem, options);
}

// ---------------------------------------------------------------- verifying

export interface VerifierOptions {
  /**
   * The cluster CA: only a directory certificate it issued can become a signer. Null under
   * --insecure, which gives that up: any certificate naming the directory role is trusted, so
   * anyone who can present one can mint tickets and capabilities for any user and any file.
   */
  caPem: string | null;
  now?: () => number;
  /** Clock skew allowed between the signer and this verifier, on `iat`, `exp` and certificate validity. */
  skewMs?: number;
}

/** What a capability is wanted for: `user` will `access` file `name` (at incarnation `epoch`). */
export interface CapabilityWant {
  user: string;
  name: string;
  /** The incarnation this server has; when omitted, any incarnation will do. */
  epoch?: number;
  access: Access;
}

interface Signer {
  key: KeyObject;
  notAfter: number;
}

interface Verified {
  claims: Readonly<Claims>;
}

function unauthenticated(message: string, details?: Record<string, unknown>): DfsError {
  return new DfsError('UNAUTHENTICATED', message, details);
}

/** Checks tokens against the signer certificates it was told to trust. */
export class TokenVerifier {
  private readonly ca: X509Certificate | null;
  private readonly now: () => number;
  private readonly skewMs: number;
  /** By kid, oldest trusted first. */
  private readonly signers = new Map<string, Signer>();
  private readonly verified = new LRUCache<string, Verified>({ max: VERIFIED_CACHE_SIZE });

  constructor(options: VerifierOptions) {
    try {
      this.ca = options.caPem === null ? null : new X509Certificate(options.caPem);
    } catch (err) {
      throw new DfsError('BAD_REQUEST', `cannot read the cluster CA certificate: ${err instanceof Error ? err.message : String(err)}`);
    }
    this.now = options.now ?? Date.now;
    this.skewMs = options.skewMs ?? DEFAULT_SKEW_MS;
  }

  /**
   * Trusts tokens signed with the key of `certPem` from now on, if it is a directory certificate
   * the cluster CA issued (any directory certificate without a CA) and valid now. Returns its kid.
   */
  trustSigner(certPem: string): string {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(certPem);
    } catch {
      throw unauthenticated('the token signer certificate cannot be read');
    }
    if (this.ca && !(cert.checkIssued(this.ca) && cert.verify(this.ca.publicKey))) {
      throw unauthenticated('the token signer certificate was not issued by the cluster CA');
    }
    const identity = identityOfCertificate(cert);
    if (identity?.role !== 'directory') {
      throw unauthenticated(`the token signer certificate names ${identity ? `${identity.role} ${identity.id}` : 'no cluster service'}, not the directory; only the directory signs tokens`);
    }
    const now = this.now();
    const notBefore = Date.parse(cert.validFrom);
    const notAfter = Date.parse(cert.validTo);
    if (!(notBefore - this.skewMs <= now && now <= notAfter + this.skewMs)) {
      throw unauthenticated(`the token signer certificate is not valid now (valid from ${cert.validFrom} to ${cert.validTo})`);
    }
    if (!isP256(cert.publicKey)) throw unauthenticated('the token signer certificate does not have an ECDSA P-256 key');
    const id = kidOf(cert);
    this.signers.delete(id);
    this.signers.set(id, { key: cert.publicKey, notAfter });
    while (this.signers.size > MAX_SIGNERS) this.signers.delete(this.signers.keys().next().value!);
    return id;
  }

  /** Whether tokens signed by `kid` would be checked (not refused as from an unknown signer). */
  knowsSigner(kid: string): boolean {
    return this.signerOf(kid) !== null;
  }

  /** The claims of a valid, unexpired ticket; UNAUTHENTICATED otherwise. */
  verifyTicket(token: string): TicketClaims {
    const claims = this.verify(token);
    if (claims.kind !== 'ticket') throw unauthenticated('expected a ticket, got a capability');
    return claims;
  }

  /**
   * The claims of a valid, unexpired capability that covers `want`: UNAUTHENTICATED when it is
   * not a valid capability, FORBIDDEN when it is one but for something else.
   */
  verifyCapability(token: string, want: CapabilityWant): CapabilityClaims {
    const claims = this.verify(token);
    if (claims.kind !== 'cap') throw unauthenticated('expected a capability, got a ticket');
    const { name } = want;
    if (claims.user !== want.user) throw new DfsError('FORBIDDEN', `this capability for ${name} is for another user`);
    if (claims.name !== name) throw new DfsError('FORBIDDEN', `this capability is for ${claims.name}, not ${name}`);
    if (want.epoch !== undefined && claims.epoch !== want.epoch) {
      const which = claims.epoch < want.epoch ? 'an older' : 'a newer';
      throw new DfsError('FORBIDDEN', `this capability is for ${which} incarnation of ${name} (epoch ${claims.epoch}, not ${want.epoch})`, { epoch: claims.epoch, want: want.epoch });
    }
    if (want.access === 'write' && claims.access !== 'write') throw new DfsError('FORBIDDEN', `this capability is for reading ${name}, not writing it`);
    return claims;
  }

  private signerOf(id: string): Signer | null {
    const signer = this.signers.get(id);
    if (!signer) return null;
    if (this.now() > signer.notAfter + this.skewMs) {
      this.signers.delete(id);
      return null;
    }
    return signer;
  }

  /** The claims of a valid, unexpired token of either kind. */
  private verify(token: string): Readonly<Claims> {
    if (typeof token !== 'string') throw unauthenticated('a token must be a string');
    if (token.length > MAX_TOKEN_CHARS) throw unauthenticated(`the token is over the ${MAX_TOKEN_CHARS}-character limit`);
    const cached = this.verified.get(token);
    if (cached) {
      // Still checked: the signer may since have been forgotten, and the token may have expired.
      if (!this.signerOf(cached.claims.kid)) {
        this.verified.delete(token);
      } else {
        this.checkTimes(cached.claims, token);
        return cached.claims;
      }
    }
    const claims = this.parse(token);
    this.checkTimes(claims, token);
    this.verified.set(token, { claims });
    return claims;
  }

  private checkTimes(claims: Claims, token: string): void {
    const now = this.now();
    if (now > claims.exp + this.skewMs) {
      this.verified.delete(token);
      throw unauthenticated(`the ${claims.kind === 'cap' ? 'capability' : 'ticket'} expired at ${new Date(claims.exp).toISOString()}`, { expired: true, expiredAt: claims.exp });
    }
    if (claims.iat > now + this.skewMs) {
      throw unauthenticated(`the ${claims.kind === 'cap' ? 'capability' : 'ticket'} was issued in the future (${new Date(claims.iat).toISOString()}); are the clocks of the directory and this service far apart?`);
    }
  }

  /** Checks the form and the signature; the claims come back frozen (they are shared through the cache). */
  private parse(token: string): Readonly<Claims> {
    if (!TOKEN_PATTERN.test(token)) throw unauthenticated('malformed token: expected t1.<claims>.<signature>');
    const cut = token.lastIndexOf('.');
    const signed = token.slice(0, cut);
    const signaturePart = token.slice(cut + 1);
    const signature = Buffer.from(signaturePart, 'base64url');
    if (signature.length !== SIGNATURE_BYTES || signature.toString('base64url') !== signaturePart) throw unauthenticated('malformed token: bad signature encoding');
    const claimsPart = signed.slice(VERSION.length + 1);
    let raw: unknown;
    try {
      const bytes = Buffer.from(claimsPart, 'base64url');
      if (bytes.toString('base64url') !== claimsPart) throw new Error('not canonical base64url');
      raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    } catch {
      throw unauthenticated('malformed token: the claims are not base64url JSON');
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw unauthenticated('malformed token: the claims are not a JSON object');
    const signerId = (raw as { kid?: unknown }).kid;
    if (typeof signerId !== 'string' || !kid.safeParse(signerId).success) throw unauthenticated('malformed token: no signer id (kid)');
    const signer = this.signerOf(signerId);
    if (!signer) throw unauthenticated(`the token was signed by an unknown signer (${signerId}); present the signer certificate first`, { unknownSigner: true, kid: signerId });
    if (!verify('sha256', Buffer.from(signed, 'ascii'), { key: signer.key, dsaEncoding: 'ieee-p1363' }, signature)) {
      throw unauthenticated('the token signature is not valid');
    }
    const result = claims.safeParse(raw);
    if (!result.success) throw unauthenticated(`malformed token: ${problemOf(result.error)}`);
    return Object.freeze(result.data);
  }
}
