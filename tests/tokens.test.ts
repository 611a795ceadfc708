/**
 * Signed tickets and capabilities (shared/auth/tokens.ts): round trips, tampering, expiry, who
 * may become a signer (with a CA and without one), capability scope, and the size bound.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DfsError } from '../shared/errors.js';
import { MAX_TOKEN_CHARS, TokenSigner, TokenVerifier, kidOf, makeInsecureSigner, tokenText, type CapabilityWant } from '../shared/auth/tokens.js';
import { createCa, createSelfSignedServiceCert, issueServiceCert, type Pem } from '../shared/tls/certs.js';

const test = suite('tokens');

interface Fixture {
  ca: Pem;
  directory: Pem;
  fileServer: Pem;
  otherCa: Pem;
  otherDirectory: Pem;
}

let pki: Fixture;

test.before(async () => {
  const ca = await createCa();
  const otherCa = await createCa('another cluster CA');
  pki = {
    ca,
    directory: await issueServiceCert(ca, { role: 'directory', id: 'directory' }, ['localhost']),
    fileServer: await issueServiceCert(ca, { role: 'file-server', id: 'fs-1' }, ['localhost']),
    otherCa,
    otherDirectory: await issueServiceCert(otherCa, { role: 'directory', id: 'directory' }, ['localhost']),
  };
});

/** A clock the test moves. */
function clock(start = Date.now()) {
  let now = start;
  return { now: () => now, advance: (ms: number) => void (now += ms) };
}

function failure(fn: () => unknown): DfsError {
  try {
    fn();
  } catch (err) {
    if (err instanceof DfsError) return err;
    throw err;
  }
  throw new Error('expected a DfsError, but nothing was thrown');
}

function setUp(now = clock()) {
  const signer = new TokenSigner(pki.directory.keyPem, pki.directory.certPem, { now: now.now });
  const verifier = new TokenVerifier({ caPem: pki.ca.certPem, now: now.now });
  verifier.trustSigner(signer.certPem);
  return { signer, verifier, now };
}

const ticketFor = { user: 'alice', admin: false, sid: 's-1' };
const capFor = { user: 'alice', name: 'notes.txt', epoch: 3, access: 'write' as const };

test('a ticket and a capability round trip', () => {
  const { signer, verifier, now } = setUp();
  assert.is(signer.kid, kidOf(pki.directory.certPem));
  assert.match(signer.kid, /^[0-9a-f]{32}$/);

  const ticket = signer.ticket(ticketFor, 60_000);
  assert.is(ticket.expiresAt, now.now() + 60_000);
  assert.ok(tokenText.safeParse(ticket.token).success);
  assert.equal(verifier.verifyTicket(ticket.token), { kind: 'ticket', kid: signer.kid, iat: now.now(), exp: ticket.expiresAt, ...ticketFor });
  // Again, from the cache: the same claims.
  assert.equal(verifier.verifyTicket(ticket.token), { kind: 'ticket', kid: signer.kid, iat: now.now(), exp: ticket.expiresAt, ...ticketFor });

  const cap = signer.capability(capFor, 60_000);
  assert.ok(tokenText.safeParse(cap.token).success);
  const want: CapabilityWant = { user: 'alice', name: 'notes.txt', epoch: 3, access: 'write' };
  assert.equal(verifier.verifyCapability(cap.token, want), { kind: 'cap', kid: signer.kid, iat: now.now(), exp: cap.expiresAt, ...capFor });
  assert.is(verifier.verifyCapability(cap.token, { user: 'alice', name: 'notes.txt', access: 'write' }).epoch, 3);

  // Each kind is refused where the other is wanted.
  assert.is(failure(() => verifier.verifyTicket(cap.token)).code, 'UNAUTHENTICATED');
  assert.is(failure(() => verifier.verifyCapability(ticket.token, want)).code, 'UNAUTHENTICATED');
});

test('a tampered payload or signature is refused', () => {
  const { signer, verifier } = setUp();
  const { token } = signer.ticket(ticketFor, 60_000);
  const [version, payload, signature] = token.split('.') as [string, string, string];

  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>;
  const forged = Buffer.from(JSON.stringify({ ...claims, admin: true })).toString('base64url');
  const bad = failure(() => verifier.verifyTicket(`${version}.${forged}.${signature}`));
  assert.is(bad.code, 'UNAUTHENTICATED');
  assert.match(bad.message, /signature/);

  const sig = Buffer.from(signature, 'base64url');
  sig[10] = sig[10]! ^ 1;
  assert.is(failure(() => verifier.verifyTicket(`${version}.${payload}.${sig.toString('base64url')}`)).code, 'UNAUTHENTICATED');
  // A signature from another key, over the same bytes.
  const stranger = new TokenSigner(pki.otherDirectory.keyPem, pki.otherDirectory.certPem);
  const strangerSig = stranger.ticket(ticketFor, 60_000).token.split('.')[2]!;
  assert.is(failure(() => verifier.verifyTicket(`${version}.${payload}.${strangerSig}`)).code, 'UNAUTHENTICATED');

  for (const junk of ['', 'not a token', 't1..', `t2.${payload}.${signature}`, `t1.${payload}`, `t1.${payload}.${signature}.x`, `t1.e30.${signature}`]) {
    assert.is(failure(() => verifier.verifyTicket(junk)).code, 'UNAUTHENTICATED', junk);
  }
  // The untouched token still verifies.
  assert.is(verifier.verifyTicket(token).user, 'alice');
});

test('an expired token is refused with details.expired, allowing for clock skew', () => {
  const { signer, verifier, now } = setUp();
  const ticket = signer.ticket(ticketFor, 1_000);
  const cap = signer.capability(capFor, 1_000);
  const want: CapabilityWant = { user: 'alice', name: 'notes.txt', access: 'read' };
  verifier.verifyTicket(ticket.token); // now cached
  now.advance(1_000 + 30_000); // at exp + the default skew: still good
  assert.is(verifier.verifyTicket(ticket.token).user, 'alice');
  now.advance(1);
  for (const error of [failure(() => verifier.verifyTicket(ticket.token)), failure(() => verifier.verifyCapability(cap.token, want))]) {
    assert.is(error.code, 'UNAUTHENTICATED');
    assert.is(error.details?.expired, true);
  }
  // A token issued in the future (beyond the skew) is refused too.
  const ahead = new TokenSigner(pki.directory.keyPem, pki.directory.certPem, { now: () => now.now() + 60_000 });
  assert.is(failure(() => verifier.verifyTicket(ahead.ticket(ticketFor, 120_000).token)).code, 'UNAUTHENTICATED');
});

test('a token from an unknown signer is refused with details.unknownSigner until trustSigner', () => {
  const now = clock();
  const signer = new TokenSigner(pki.directory.keyPem, pki.directory.certPem, { now: now.now });
  const verifier = new TokenVerifier({ caPem: pki.ca.certPem, now: now.now });
  const { token } = signer.ticket(ticketFor, 60_000);
  const error = failure(() => verifier.verifyTicket(token));
  assert.is(error.code, 'UNAUTHENTICATED');
  assert.is(error.details?.unknownSigner, true);
  assert.is(error.details?.kid, signer.kid);
  assert.not.ok(verifier.knowsSigner(signer.kid));
  assert.is(verifier.trustSigner(pki.directory.certPem), signer.kid);
  assert.ok(verifier.knowsSigner(signer.kid));
  assert.is(verifier.verifyTicket(token).user, 'alice');
});

test('only a directory certificate the cluster CA issued can become a signer', () => {
  const verifier = new TokenVerifier({ caPem: pki.ca.certPem });
  const fromOtherCa = failure(() => verifier.trustSigner(pki.otherDirectory.certPem));
  assert.is(fromOtherCa.code, 'UNAUTHENTICATED');
  assert.match(fromOtherCa.message, /cluster CA/);
  const fileServer = failure(() => verifier.trustSigner(pki.fileServer.certPem));
  assert.is(fileServer.code, 'UNAUTHENTICATED');
  assert.match(fileServer.message, /file-server fs-1/);
  assert.is(failure(() => verifier.trustSigner('not a certificate')).code, 'UNAUTHENTICATED');
  assert.is(failure(() => verifier.trustSigner(pki.ca.certPem)).code, 'UNAUTHENTICATED');

  // Tokens those keys sign stay unknown-signer.
  const forger = new TokenSigner(pki.otherDirectory.keyPem, pki.otherDirectory.certPem);
  assert.is(failure(() => verifier.verifyTicket(forger.ticket({ ...ticketFor, admin: true }, 60_000).token)).details?.unknownSigner, true);
});

test('a verifier remembers at most 16 signers; a token of a forgotten one is unknown again, even if cached', async () => {
  const { signer, verifier } = setUp();
  const { token } = signer.ticket(ticketFor, 60_000);
  verifier.verifyTicket(token); // cached
  for (let i = 0; i < 16; i++) verifier.trustSigner((await issueServiceCert(pki.ca, { role: 'directory', id: 'directory' }, ['localhost'])).certPem);
  assert.not.ok(verifier.knowsSigner(signer.kid));
  assert.is(failure(() => verifier.verifyTicket(token)).details?.unknownSigner, true);
  verifier.trustSigner(signer.certPem);
  assert.is(verifier.verifyTicket(token).user, 'alice');
});

test('a signer certificate outside its validity period is refused', () => {
  const later = Date.now() + 800 * 86_400_000; // past the 730 days of a service certificate
  const verifier = new TokenVerifier({ caPem: pki.ca.certPem, now: () => later });
  assert.match(failure(() => verifier.trustSigner(pki.directory.certPem)).message, /not valid now/);
});

test('without a CA (--insecure) any self-signed directory certificate can sign; a file server still cannot', async () => {
  const signer = await makeInsecureSigner();
  const verifier = new TokenVerifier({ caPem: null });
  assert.is(verifier.trustSigner(signer.certPem), signer.kid);
  assert.is(verifier.verifyTicket(signer.ticket(ticketFor, 60_000).token).sid, 's-1');
  // A CA-issued directory certificate is a directory certificate too.
  verifier.trustSigner(pki.otherDirectory.certPem);
  const selfSignedFs = await createSelfSignedServiceCert({ role: 'file-server', id: 'fs-1' });
  assert.is(failure(() => verifier.trustSigner(selfSignedFs.certPem)).code, 'UNAUTHENTICATED');
  // A verifier with a CA does not take the insecure signer.
  assert.is(failure(() => new TokenVerifier({ caPem: pki.ca.certPem }).trustSigner(signer.certPem)).code, 'UNAUTHENTICATED');
});

test('a capability covers only its user, file, incarnation and access', () => {
  const { signer, verifier } = setUp();
  const write = signer.capability(capFor, 60_000).token;
  const read = signer.capability({ ...capFor, access: 'read' }, 60_000).token;
  const want: CapabilityWant = { user: 'alice', name: 'notes.txt', epoch: 3, access: 'read' };

  const forbidden = (token: string, asked: CapabilityWant, pattern: RegExp) => {
    const error = failure(() => verifier.verifyCapability(token, asked));
    assert.is(error.code, 'FORBIDDEN', error.message);
    assert.match(error.message, pattern);
  };
  forbidden(write, { ...want, name: 'other.txt' }, /notes\.txt, not other\.txt/);
  forbidden(write, { ...want, user: 'bob' }, /another user/);
  forbidden(write, { ...want, epoch: 4 }, /older incarnation of notes\.txt/);
  forbidden(write, { ...want, epoch: 2 }, /newer incarnation/);
  forbidden(read, { ...want, access: 'write' }, /for reading notes\.txt, not writing it/);

  assert.is(verifier.verifyCapability(write, want).access, 'write');
  assert.is(verifier.verifyCapability(read, want).access, 'read');
});

test('an over-long token is refused before it is parsed; the wire schema bounds it too', () => {
  const { signer, verifier } = setUp();
  const { token } = signer.ticket(ticketFor, 60_000);
  const long = token + 'A'.repeat(MAX_TOKEN_CHARS);
  const error = failure(() => verifier.verifyTicket(long));
  assert.is(error.code, 'UNAUTHENTICATED');
  assert.match(error.message, /4096-character limit/);
  assert.not.ok(tokenText.safeParse(long).success);
  assert.not.ok(tokenText.safeParse('t1.a.b').success);
  assert.not.ok(tokenText.safeParse(`t1.${'a'.repeat(20)}.b=`).success);
});

test('the signer refuses a key that is not its certificate’s, and bad fields', () => {
  assert.is(failure(() => new TokenSigner(pki.fileServer.keyPem, pki.directory.certPem)).code, 'BAD_REQUEST');
  const signer = new TokenSigner(pki.directory.keyPem, pki.directory.certPem);
  assert.is(failure(() => signer.ticket({ ...ticketFor, user: '' }, 60_000)).code, 'BAD_REQUEST');
  assert.is(failure(() => signer.capability({ ...capFor, name: '../escape' }, 60_000)).code, 'BAD_REQUEST');
  assert.is(failure(() => signer.ticket(ticketFor, 0)).code, 'BAD_REQUEST');
});

test.run();
