/**
 * The cluster CA (shared/tls/certs.ts) and `npm run cert` (cert.ts): a CA made once and reused;
 * service certificates issued, reused, and issued again when they miss a host or another CA
 * issued them; mutual TLS with them through node:https (the server sees who the client is, a
 * client without a certificate is not authorized, a host the certificate does not name is
 * refused); and `cert issue` end to end: the files and their modes, the command printed for
 * the other machine, and its refusals with their exit codes.
 */
import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile, readdir, stat, writeFile, mkdir } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { DIRECTORY_PLACEHOLDER, UsageError, parsePlan, remoteCommand, type IssuePlan } from '../cert.js';
import { CA_CERT_FILE, CA_KEY_FILE, createCa, ensureCa, ensureServiceCert, issueServiceCert, type Pem } from '../shared/tls/certs.js';
import { identityOfCertificate, identityOfPeer, type ServiceIdentity } from '../shared/tls/identity.js';
import { DIST, removeDir, tempDir } from './helpers/process.js';

const test = suite('cert');

const mode = async (path: string) => (await stat(path)).mode & 0o777;

// ------------------------------------------------------------------ the CA and service certificates

test('ensureCa makes ca.crt and ca.key (mode 0600) once, then reuses them', async () => {
  const dir = await tempDir('dfs-cert-');
  try {
    const tls = join(dir, 'tls');
    const first = await ensureCa(tls);
    assert.ok(first.created);
    assert.is(await mode(join(tls, CA_KEY_FILE)), 0o600);
    assert.is(await readFile(join(tls, CA_CERT_FILE), 'utf8'), first.certPem);
    const cert = new X509Certificate(first.certPem);
    assert.ok(cert.ca);
    assert.ok(cert.verify(cert.publicKey), 'self-signed');
    const second = await ensureCa(tls);
    assert.not.ok(second.created);
    assert.is(second.certPem, first.certPem);
    assert.is(second.keyPem, first.keyPem);
  } finally {
    await removeDir(dir);
  }
});

test('ensureCa refuses a folder with only one of ca.crt and ca.key', async () => {
  const dir = await tempDir('dfs-cert-');
  try {
    const ca = await createCa();
    await writeFile(join(dir, CA_CERT_FILE), ca.certPem);
    try {
      await ensureCa(dir);
      assert.unreachable('a CA without its key');
    } catch (err) {
      assert.match((err as Error).message, /has one of ca\.crt and ca\.key but not the other/);
    }
  } finally {
    await removeDir(dir);
  }
});

test('ensureServiceCert issues, reuses, and issues again for a missing host or another CA', async () => {
  const dir = await tempDir('dfs-cert-');
  try {
    const ca = await ensureCa(dir);
    const fs1: ServiceIdentity = { role: 'file-server', id: 'fs-1' };
    const first = await ensureServiceCert(dir, ca, fs1, ['localhost', '127.0.0.1']);
    assert.is(first.issued, 'there is none');
    assert.is(first.cert, join(dir, 'fs-1.crt'));
    assert.is(await mode(first.key), 0o600);
    const firstPem = await readFile(first.cert, 'utf8');
    const cert = new X509Certificate(firstPem);
    assert.equal(identityOfCertificate(cert), fs1);
    assert.ok(cert.checkIssued(new X509Certificate(ca.certPem)));
    assert.is(cert.checkHost('localhost'), 'localhost');
    assert.is(cert.checkIP('127.0.0.1'), '127.0.0.1');
    assert.is(cert.checkHost('elsewhere.example'), undefined);

    // The same hosts, or fewer: the certificate will do.
    assert.is((await ensureServiceCert(dir, ca, fs1, ['localhost', '127.0.0.1'])).issued, null);
    assert.is((await ensureServiceCert(dir, ca, fs1, ['127.0.0.1'])).issued, null);
    assert.is(await readFile(first.cert, 'utf8'), firstPem, 'not issued again');

    const more = await ensureServiceCert(dir, ca, fs1, ['localhost', '127.0.0.1', 'box1.example']);
    assert.is(more.issued, 'it does not name box1.example');
    assert.ok(new X509Certificate(await readFile(more.cert)).checkHost('box1.example'));

    const otherCa = await createCa('another CA');
    const again = await ensureServiceCert(dir, otherCa, fs1, ['localhost']);
    assert.is(again.issued, 'another CA issued it');
    assert.ok(new X509Certificate(await readFile(again.cert)).checkIssued(new X509Certificate(otherCa.certPem)));

    // A certificate of another service in its place is issued again too.
    const lockPem = await issueServiceCert(ca, { role: 'lock', id: 'lock' }, ['localhost']);
    await writeFile(first.cert, lockPem.certPem);
    await writeFile(first.key, lockPem.keyPem);
    assert.is((await ensureServiceCert(dir, ca, fs1, ['localhost'])).issued, 'it names another service');
  } finally {
    await removeDir(dir);
  }
});

// ------------------------------------------------------------------ mutual TLS with them

interface Seen {
  authorized: boolean;
  authorizationError: string | null;
  identity: ServiceIdentity | null;
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

/** What the server saw of a client, or the client's error (its code) when TLS refused. */
function get(port: number, options: { ca: string; client?: Pem; servername?: string }): Promise<Seen | { error: string }> {
  return new Promise((resolve) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path: '/',
        agent: false,
        ca: options.ca,
        ...(options.client ? { cert: options.client.certPem, key: options.client.keyPem } : {}),
        ...(options.servername ? { servername: options.servername } : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve(JSON.parse(Buffer.concat(chunks).toString()) as Seen));
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    req.end();
  });
}

test('TLS: the server knows a client by its certificate; no certificate or a foreign one is not authorized; an unnamed host is refused', async () => {
  const ca = await createCa();
  const server = await issueServiceCert(ca, { role: 'file-server', id: 'fs-1' }, ['localhost', '127.0.0.1']);
  const directory = await issueServiceCert(ca, { role: 'directory', id: 'directory' }, ['localhost']);
  const foreign = await issueServiceCert(await createCa('another CA'), { role: 'directory', id: 'directory' }, ['localhost']);
  const https = createServer({ cert: server.certPem, key: server.keyPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: false }, (req, res) => {
    const socket = req.socket as TLSSocket;
    const seen: Seen = {
      authorized: socket.authorized,
      authorizationError: socket.authorizationError ? String(socket.authorizationError) : null,
      identity: socket.authorized ? identityOfPeer(socket.getPeerCertificate()) : null,
    };
    res.end(JSON.stringify(seen));
  });
  const port = await listen(https);
  try {
    assert.equal(await get(port, { ca: ca.certPem, client: directory }), { authorized: true, authorizationError: null, identity: { role: 'directory', id: 'directory' } });
    // By name too: the certificate names localhost.
    assert.equal(await get(port, { ca: ca.certPem, client: directory, servername: 'localhost' }), { authorized: true, authorizationError: null, identity: { role: 'directory', id: 'directory' } });

    const anonymous = await get(port, { ca: ca.certPem });
    assert.ok('authorized' in anonymous);
    assert.is((anonymous as Seen).authorized, false);
    assert.is((anonymous as Seen).identity, null);

    const stranger = await get(port, { ca: ca.certPem, client: foreign });
    assert.ok('authorized' in stranger);
    assert.is((stranger as Seen).authorized, false);
    assert.ok((stranger as Seen).authorizationError, 'a reason it is not authorized');

    // The client checks the server's certificate names the host it asked for (checkServerIdentity).
    assert.equal(await get(port, { ca: ca.certPem, client: directory, servername: 'box9.example' }), { error: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    // And that our CA issued it.
    const other = await createCa('another CA');
    const refused = await get(port, { ca: other.certPem, client: directory });
    assert.ok('error' in refused && /UNABLE_TO_VERIFY|SELF_SIGNED|UNABLE_TO_GET_ISSUER/.test(refused.error), JSON.stringify(refused));
  } finally {
    await new Promise((resolve) => https.close(resolve));
  }
});

// ------------------------------------------------------------------ the plan and the printed command

test('parsePlan: issue with its defaults, hosts repeated or with commas', () => {
  assert.equal(parsePlan(['issue', 'fs-4', '--host', 'box2.example', '--host', '10.0.0.5,box2', '--host', 'box2.example']), {
    command: 'issue',
    data: 'data',
    role: 'file-server',
    id: 'fs-4',
    hosts: ['box2.example', '10.0.0.5', 'box2'],
    out: join('data', 'tls', 'issued', 'fs-4'),
    force: false,
    port: 12001,
    directory: null,
  } satisfies IssuePlan);
  const plan = parsePlan(['issue', 'fs-4', '--host', 'h', '--data', '/srv/dfs', '--out', 'carry', '--force', '--port', '13000', '--directory', 'wss://box1:9090']) as IssuePlan;
  assert.equal([plan.data, plan.out, plan.force, plan.port, plan.directory], ['/srv/dfs', 'carry', true, 13000, 'wss://box1:9090']);
  assert.equal((parsePlan(['issue', 'x', '--host', 'h', '--data', '/srv/dfs']) as IssuePlan).out, join('/srv/dfs', 'tls', 'issued', 'x'));
  const lock = parsePlan(['issue', '--role', 'lock', '--host', 'box3']) as IssuePlan;
  assert.equal([lock.role, lock.id], ['lock', 'lock']);
  assert.equal(parsePlan(['init', '--data', 'd']), { command: 'init', data: 'd' });
  assert.equal(parsePlan(['show', 'a.crt', 'b.crt']), { command: 'show', data: 'data', files: ['a.crt', 'b.crt'] });
  assert.equal(parsePlan(['-h']), { command: 'help' });
  assert.equal(parsePlan(['issue', '--help']), { command: 'help' });
});

test('parsePlan: usage errors, and ids refused (not usage errors: exit 1)', () => {
  const usage = (argv: string[], pattern: RegExp) => {
    try {
      parsePlan(argv);
      assert.unreachable(argv.join(' '));
    } catch (err) {
      assert.instance(err, UsageError, `${argv.join(' ')}: ${(err as Error).message}`);
      assert.match((err as Error).message, pattern);
    }
  };
  const refused = (argv: string[], pattern: RegExp) => {
    try {
      parsePlan(argv);
      assert.unreachable(argv.join(' '));
    } catch (err) {
      assert.not.instance(err, UsageError, argv.join(' '));
      assert.match((err as Error).message, pattern);
    }
  };
  usage([], /a command is needed/);
  usage(['renew'], /unknown command "renew"/);
  usage(['issue', 'fs-4'], /needs --host.*clients check that the server's certificate names the host/);
  usage(['issue', '--host', 'h'], /needs the id of the file server/);
  usage(['issue', 'fs-4', '--host', '0.0.0.0'], /address to listen on/);
  usage(['issue', 'fs-4', '--host', 'wss://box2:12001'], /not a URL/);
  usage(['issue', 'fs-4', '--host', 'box2:12001'], /leave the port out/);
  usage(['issue', 'fs-4', '--host', 'h', '--role', 'client'], /--role must be/);
  usage(['issue', 'fs-4', '--host', 'h', '--port', '70000'], /--port must be a port number/);
  usage(['issue', 'fs-4', '--host', 'h', '--directory', 'http://box1:9090'], /--directory must be/);
  usage(['issue', 'fs-4', 'fs-5', '--host', 'h'], /takes one ID/);
  usage(['issue', 'fs-4', '--host', 'h', '--role', 'directory'], /give the id directory or leave it out/);
  usage(['init', '--host', 'h'], /cert init takes no --host/);
  usage(['issue', 'fs-4', '--host', 'h', '--bogus'], /bogus/);
  refused(['issue', 'lock', '--host', 'h'], /"lock" cannot be a file server's id/);
  refused(['issue', 'CA', '--host', 'h'], /"CA" cannot be a file server's id.*CA/);
  refused(['issue', 'no/slash', '--host', 'h'], /not a valid server id/);
  refused(['issue', '.x', '--host', 'h'], /not a valid server id/);
});

test('remoteCommand: the command for the other machine', () => {
  const plan = parsePlan(['issue', 'fs-4', '--host', 'box2.example', '--host', '10.0.0.5', '--directory', 'wss://box1.example:9090']) as IssuePlan;
  assert.is(
    remoteCommand(plan),
    'npm run file-server -- --id fs-4 --host 0.0.0.0 --advertise wss://box2.example:12001 --directory wss://box1.example:9090 --ca fs-4/ca.crt --cert fs-4/fs-4.crt --key fs-4/fs-4.key',
  );
  const v6 = parsePlan(['issue', 'fs-5', '--host', 'fd00::5', '--port', '13000', '--out', '/tmp/carry me']) as IssuePlan;
  assert.is(
    remoteCommand(v6),
    `npm run file-server -- --id fs-5 --host 0.0.0.0 --port 13000 --advertise 'wss://[fd00::5]:13000' --directory ${DIRECTORY_PLACEHOLDER} --ca 'carry me/ca.crt' --cert 'carry me/fs-5.crt' --key 'carry me/fs-5.key'`,
  );
  assert.is(remoteCommand(parsePlan(['issue', '--role', 'lock', '--host', 'box3']) as IssuePlan), 'npm run lock -- --host 0.0.0.0 --ca lock/ca.crt --cert lock/lock.crt --key lock/lock.key');
});

// ------------------------------------------------------------------ `cert` end to end

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cert(args: string[], cwd: string): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(DIST, 'cert.js'), ...args], { cwd, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** An error is one line on stderr. */
function oneLine(run: Run, code: number, pattern: RegExp): void {
  assert.is(run.code, code, `exit ${run.code}: ${run.stderr}`);
  const lines = run.stderr.trimEnd().split('\n');
  assert.match(lines[0]!, pattern);
  if (code === 1) assert.is(lines.length, 1, run.stderr);
  else assert.equal(lines.slice(1), ['run npm run cert -- --help for the options']);
}

test('cert issue end to end: refusals, files and modes, the command, --force; init and show', async () => {
  const cwd = await tempDir('dfs-cert-cli-');
  try {
    const help = await cert(['--help'], cwd);
    assert.is(help.code, 0);
    assert.match(help.stdout, /^usage: npm run cert -- COMMAND/);

    // No CA yet: issue refuses and says how to make one; it makes nothing.
    oneLine(await cert(['issue', 'fs-4', '--host', 'box2.example'], cwd), 1, /^cert: error: there is no cluster CA in data\/tls yet: run npm start once first .*npm run cert -- init$/);
    assert.equal(await readdir(cwd), []);
    oneLine(await cert(['issue', 'fs-4', '--host', 'box2.example', '--data', 'elsewhere'], cwd), 1, /npm run cert -- init --data elsewhere$/);
    oneLine(await cert(['show'], cwd), 1, /^cert: error: there is no data\/tls yet/);

    const init = await cert(['init'], cwd);
    assert.is(init.code, 0, init.stderr);
    assert.match(init.stdout, /made a new cluster CA: data\/tls\/ca\.crt/);
    const tls = join(cwd, 'data', 'tls');
    assert.is(await mode(join(tls, CA_KEY_FILE)), 0o600);
    const caPem = await readFile(join(tls, CA_CERT_FILE), 'utf8');
    const again = await cert(['init'], cwd);
    assert.is(again.code, 0);
    assert.match(again.stdout, /exists already: data\/tls\/ca\.crt; nothing done/);
    assert.is(await readFile(join(tls, CA_CERT_FILE), 'utf8'), caPem);

    const refusals: Array<[string[], number, RegExp]> = [
      [['issue', 'fs-4'], 2, /^cert: cert issue needs --host/],
      [['issue', 'lock', '--host', 'box2.example'], 1, /^cert: error: "lock" cannot be a file server's id/],
      [['issue', 'directory', '--host', 'box2.example'], 1, /^cert: error: "directory" cannot be a file server's id/],
      [['issue', 'ca', '--host', 'box2.example'], 1, /^cert: error: "ca" cannot be a file server's id/],
      [['issue', 'fs 4', '--host', 'box2.example'], 1, /^cert: error: "fs 4" is not a valid server id/],
      [['frobnicate'], 2, /^cert: unknown command/],
    ];
    const runs = await Promise.all(refusals.map(([args]) => cert(args, cwd)));
    refusals.forEach(([, code, pattern], i) => oneLine(runs[i]!, code, pattern));
    assert.equal((await readdir(tls)).sort(), ['ca.crt', 'ca.key'], 'refusals write nothing');

    const issued = await cert(['issue', 'fs-4', '--host', 'box2.example', '--host', '10.0.0.5', '--directory', 'wss://box1.example:9090'], cwd);
    assert.is(issued.code, 0, issued.stderr);
    const out = join(tls, 'issued', 'fs-4');
    assert.equal((await readdir(out)).sort(), ['ca.crt', 'fs-4.crt', 'fs-4.key'], 'the three files, never the CA key');
    assert.is(await mode(join(out, 'fs-4.key')), 0o600);
    assert.is(await readFile(join(out, 'ca.crt'), 'utf8'), caPem);
    const certPem = await readFile(join(out, 'fs-4.crt'), 'utf8');
    const x509 = new X509Certificate(certPem);
    const ca = new X509Certificate(caPem);
    assert.ok(x509.checkIssued(ca) && x509.verify(ca.publicKey), 'signed by the cluster CA');
    assert.equal(identityOfCertificate(x509), { role: 'file-server', id: 'fs-4' });
    assert.is(x509.subjectAltName, 'DNS:box2.example, IP Address:10.0.0.5', 'the hosts given and nothing else');
    assert.ok(x509.checkPrivateKey(createPrivateKey(await readFile(join(out, 'fs-4.key')))), "the key is the certificate's");
    for (const path of ['data/tls/issued/fs-4/fs-4.crt', 'data/tls/issued/fs-4/fs-4.key', 'data/tls/issued/fs-4/ca.crt']) assert.ok(issued.stdout.includes(path), `${path} in ${issued.stdout}`);
    assert.ok(
      issued.stdout.includes(
        '\n  npm run file-server -- --id fs-4 --host 0.0.0.0 --advertise wss://box2.example:12001 --directory wss://box1.example:9090 --ca fs-4/ca.crt --cert fs-4/fs-4.crt --key fs-4/fs-4.key\n',
      ),
      issued.stdout,
    );

    // Files there already: refused without --force, and left as they were.
    oneLine(await cert(['issue', 'fs-4', '--host', 'box2.example'], cwd), 1, /^cert: error: .*fs-4\.crt.* exist already; give --force/);
    assert.is(await readFile(join(out, 'fs-4.crt'), 'utf8'), certPem);
    const forced = await cert(['issue', 'fs-4', '--host', 'box2.example', '--force'], cwd);
    assert.is(forced.code, 0, forced.stderr);
    assert.match(forced.stdout, /--directory wss:\/\/THIS-HOST:9090 /);
    assert.is.not(await readFile(join(out, 'fs-4.crt'), 'utf8'), certPem);
    assert.is(await mode(join(out, 'fs-4.key')), 0o600);

    // --out elsewhere: the command names the files by that folder's name.
    const carried = await cert(['issue', 'box2', '--host', 'box2.example', '--out', 'to-carry'], cwd);
    assert.is(carried.code, 0, carried.stderr);
    assert.equal((await readdir(join(cwd, 'to-carry'))).sort(), ['box2.crt', 'box2.key', 'ca.crt']);
    assert.match(carried.stdout, /--ca to-carry\/ca\.crt --cert to-carry\/box2\.crt --key to-carry\/box2\.key/);

    // show: every certificate in data/tls and data/tls/issued, and whether this CA issued it.
    const foreignDir = join(cwd, 'foreign');
    await mkdir(foreignDir);
    const foreign = await issueServiceCert(await createCa('another CA'), { role: 'file-server', id: 'fs-9' }, ['box9']);
    await writeFile(join(foreignDir, 'fs-9.crt'), foreign.certPem);
    const shown = await cert(['show'], cwd);
    assert.is(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /^data\/tls\/ca\.crt\n {2}identity {2}a CA \(CN=dfs cluster CA, O=dfs\)\n {2}hosts {5}-\n {2}valid {5}\S+ to \S+\n {2}issuer {4}itself: this is the cluster CA\n/);
    assert.match(shown.stdout, /data\/tls\/issued\/fs-4\/fs-4\.crt\n {2}identity {2}file-server fs-4\n {2}hosts {5}box2\.example\n {2}valid {5}\d{4}-\S+Z to \d{4}-\S+Z\n {2}issuer {4}this cluster CA/);
    const named = await cert(['show', 'foreign/fs-9.crt', 'to-carry/box2.crt'], cwd);
    assert.is(named.code, 0, named.stderr);
    assert.match(named.stdout, /foreign\/fs-9\.crt\n {2}identity {2}file-server fs-9\n {2}hosts {5}box9\n.*\n {2}issuer {4}NOT this cluster CA, but CN=another CA, O=dfs/);
    assert.match(named.stdout, /to-carry\/box2\.crt\n {2}identity {2}file-server box2\n.*\n.*\n {2}issuer {4}this cluster CA/);
    oneLine(await cert(['show', 'missing.crt'], cwd), 1, /^cert: error: cannot read a certificate: missing\.crt: no such file$/);
  } finally {
    await removeDir(cwd);
  }
});

test.run();
