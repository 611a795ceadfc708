/**
 * `npm run cert`: the cluster CA and its certificates, from the command line. `npm start` keeps
 * them in DATA/tls (see shared/tls/certs.ts) and issues the certificates of the services it runs
 * itself; this command is for the rest:
 *
 *     cert issue ID --host HOST...   a file server's certificate for another machine: ID.crt,
 *                                    ID.key and a copy of ca.crt, to carry there (never ca.key)
 *     cert init                      make the CA if there is none yet
 *     cert show [FILE...]            what the certificates in DATA/tls (or FILE...) say
 *
 * Parsing the arguments into a plan and the command printed for the other machine are pure
 * (exported for the tests); everything that touches files is below them.
 */
import { X509Certificate } from 'node:crypto';
import { mkdir, readdir } from 'node:fs/promises';
import { realpathSync } from 'node:fs';
import { isIP } from 'node:net';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { PRIVATE_FILE_MODE, readIfExists, writeFileDurably } from './shared/durable.js';
import { serverId, wsUrl } from './shared/protocol.js';
import { CA_CERT_FILE, CA_KEY_FILE, RESERVED_IDS, ensureCa, issueServiceCert, type Pem } from './shared/tls/certs.js';
import { SERVICE_ROLES, describeIdentity, identityOfCertificate, isServiceRole, type ServiceRole } from './shared/tls/identity.js';

export const USAGE = `usage: npm run cert -- COMMAND [options]     (or: node dist/cert.js COMMAND [options])

The cluster's certificate authority (CA) and the certificates it issues. npm start keeps them in
DATA/tls and issues those of the services it runs; use this command for a file server on
another machine.

commands:
  issue ID --host HOST...  issue the certificate of file server ID, signed by the CA in DATA/tls,
                           for running it on another machine. Writes ID.crt, ID.key (mode 0600)
                           and a copy of ca.crt to --out, the three files to carry there (the
                           CA key never leaves DATA/tls), and prints the command to run there.
      --host HOST          a name or IP address the other machine is reached by (repeat, or
                           separate with commas): clients check that the server's certificate
                           names the host they connect to, so give every name they will use
      --out DIR            where to write the files (default DATA/tls/issued/ID)
      --role ROLE          file-server (default), directory or lock; a directory or lock
                           certificate has the id directory or lock (ID may be left out)
      --port N             the port the file server will listen on, for the printed command
                           (default 12001)
      --directory URL      the directory service's URL, for the printed command
                           (default a placeholder, wss://THIS-HOST:9090)
      --force              replace files already in --out
  init                     make the cluster CA in DATA/tls if there is none; says where ca.crt is
  show [FILE...]           for each certificate in DATA/tls and DATA/tls/issued/* (or each
                           FILE): whom it names, its hosts, when it is valid, and whether this
                           cluster's CA issued it

options:
  --data DIR               the folder npm start uses (default data); the CA is in DIR/tls
  -h, --help               show this help

exit status: 0 done, 1 error (refused, or a file could not be read or written), 2 usage error`;

/** A mistake in the command line: exit 2 with the message and a pointer to --help. */
export class UsageError extends Error {}

export const DEFAULT_FILE_SERVER_PORT = 12001;
export const DIRECTORY_PLACEHOLDER = 'wss://THIS-HOST:9090';
/** The folder in DATA/tls where `cert issue` writes by default, one folder per id. */
export const ISSUED_DIR = 'issued';

export interface IssuePlan {
  command: 'issue';
  data: string;
  role: ServiceRole;
  id: string;
  hosts: string[];
  /** Where the three files go. */
  out: string;
  force: boolean;
  port: number;
  /** The directory's URL for the printed command, or null for the placeholder. */
  directory: string | null;
}

export interface InitPlan {
  command: 'init';
  data: string;
}

export interface ShowPlan {
  command: 'show';
  data: string;
  /** The files to show; none: every certificate in DATA/tls. */
  files: string[];
}

export type Plan = IssuePlan | InitPlan | ShowPlan | { command: 'help' };

export function tlsDirOf(data: string): string {
  return join(data, 'tls');
}

/** Why `id` cannot be a file server's certificate id, or null when it can. */
export function fileServerIdProblem(id: string): string | null {
  const parsed = serverId.safeParse(id);
  if (!parsed.success) return `${JSON.stringify(id)} is not a valid server id: ${parsed.error.issues[0]?.message ?? 'invalid'}`;
  // Compared without case: on a case-insensitive file system CA.crt is ca.crt.
  if (RESERVED_IDS.has(id.toLowerCase())) {
    return `${JSON.stringify(id)} cannot be a file server's id: its certificate files would clash with those of the ${id.toLowerCase() === 'ca' ? 'CA' : `${id.toLowerCase()} service`} in DATA/tls`;
  }
  return null;
}

/** Why `host` cannot go in a certificate's subjectAltName, or null when it can. */
export function hostProblem(host: string): string | null {
  if (host === '') return '--host needs a name or an IP address';
  if (host.includes('://') || host.includes('/')) return `--host takes a name or an IP address, not a URL: ${JSON.stringify(host)}`;
  const ip = isIP(host);
  if (ip !== 0) {
    if (host === '0.0.0.0' || /^[0:]+$/.test(host)) return `--host ${host} is an address to listen on, not one others can connect to; give the name or address the other machine is reached by`;
    return null;
  }
  if (host.includes(':')) return `--host ${JSON.stringify(host)} is neither a host name nor an IP address (leave the port out)`;
  if (host.length > 253 || !/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/.test(host)) {
    return `--host ${JSON.stringify(host)} is not a valid host name`;
  }
  return null;
}

function port(text: string, flag: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < 1 || value > 65535) throw new UsageError(`${flag} must be a port number from 1 to 65535, not ${JSON.stringify(text)}`);
  return value;
}

const OPTIONS = {
  data: { type: 'string' },
  host: { type: 'string', multiple: true },
  out: { type: 'string' },
  role: { type: 'string' },
  port: { type: 'string' },
  directory: { type: 'string' },
  force: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** The options each command takes besides --data and --help. */
const COMMAND_OPTIONS: Record<'issue' | 'init' | 'show', ReadonlyArray<keyof typeof OPTIONS>> = {
  issue: ['host', 'out', 'role', 'port', 'directory', 'force'],
  init: [],
  show: [],
};

/**
 * The plan for a command line (without `node cert.js`). Throws UsageError for a mistake in it,
 * and a plain Error for an id the CA must not issue a certificate to (exit 1: refused).
 */
export function parsePlan(argv: string[]): Plan {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, strict: true, options: OPTIONS });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) return { command: 'help' };
  const [command, ...rest] = positionals;
  if (command === undefined) throw new UsageError('a command is needed: issue, init or show');
  if (command !== 'issue' && command !== 'init' && command !== 'show') throw new UsageError(`unknown command ${JSON.stringify(command)}; the commands are issue, init and show`);
  for (const name of Object.keys(values) as Array<keyof typeof OPTIONS>) {
    if (name !== 'data' && name !== 'help' && !COMMAND_OPTIONS[command].includes(name)) throw new UsageError(`cert ${command} takes no --${name}`);
  }
  const data = values.data ?? 'data';
  if (data === '') throw new UsageError('--data needs a folder');

  if (command === 'init') {
    if (rest.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(rest[0])}`);
    return { command, data };
  }
  if (command === 'show') return { command, data, files: rest };

  const role = values.role ?? 'file-server';
  if (!isServiceRole(role)) throw new UsageError(`--role must be ${SERVICE_ROLES.join(', ')}, not ${JSON.stringify(role)}`);
  if (rest.length > 1) throw new UsageError(`unexpected argument ${JSON.stringify(rest[1])}: cert issue takes one ID`);
  let id = rest[0];
  if (role === 'file-server') {
    if (id === undefined) throw new UsageError('cert issue needs the id of the file server, e.g. cert issue fs-4 --host box2.example');
  } else {
    if (values.port !== undefined || values.directory !== undefined) throw new UsageError(`--port and --directory are for a file server's command; a ${role} certificate takes neither`);
    // The directory and the lock service are named by their role (shared/tls/identity.ts).
    if (id !== undefined && id !== role) throw new UsageError(`a ${role} certificate names the ${role} service; give the id ${role} or leave it out, not ${JSON.stringify(id)}`);
    id = role;
  }
  const hosts = [...new Set((values.host ?? []).flatMap((h) => h.split(',')).map((h) => h.trim()))];
  if (hosts.length === 0) {
    throw new UsageError(
      `cert issue needs --host: the names or IP addresses the other machine is reached by (clients check that the server's certificate names the host they connect to), e.g. --host box2.example --host 10.0.0.5`,
    );
  }
  for (const host of hosts) {
    const problem = hostProblem(host);
    if (problem) throw new UsageError(problem);
  }
  const directory = values.directory ?? null;
  if (directory !== null && !wsUrl.safeParse(directory).success) throw new UsageError(`--directory must be a wss://host:port URL, not ${JSON.stringify(directory)}`);
  if (values.out === '') throw new UsageError('--out needs a folder');
  if (role === 'file-server') {
    const problem = fileServerIdProblem(id);
    if (problem) throw new Error(problem);
  }
  return {
    command,
    data,
    role,
    id,
    hosts,
    out: values.out ?? join(tlsDirOf(data), ISSUED_DIR, id),
    force: values.force === true,
    port: port(values.port ?? String(DEFAULT_FILE_SERVER_PORT), '--port'),
    directory,
  };
}

/** The three files `cert issue` writes, by name in --out. */
export function issuedFileNames(id: string): { cert: string; key: string; ca: string } {
  return { cert: `${id}.crt`, key: `${id}.key`, ca: CA_CERT_FILE };
}

function urlHost(host: string): string {
  return isIP(host) === 6 ? `[${host}]` : host;
}

function shellWord(word: string): string {
  return /^[A-Za-z0-9_./:@=,+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * The command to run on the other machine, from the dfs checkout there, once the folder --out
 * has been copied into it: the files are named by that folder's name.
 */
export function remoteCommand(plan: IssuePlan): string {
  const folder = basename(resolve(plan.out));
  const names = issuedFileNames(plan.id);
  const files = ['--ca', `${folder}/${names.ca}`, '--cert', `${folder}/${names.cert}`, '--key', `${folder}/${names.key}`];
  if (plan.role !== 'file-server') return [`npm run ${plan.role} --`, ...['--host', '0.0.0.0', ...files].map(shellWord)].join(' ');
  const args = ['--id', plan.id, '--host', '0.0.0.0'];
  if (plan.port !== DEFAULT_FILE_SERVER_PORT) args.push('--port', String(plan.port));
  args.push('--advertise', `wss://${urlHost(plan.hosts[0]!)}:${plan.port}`, '--directory', plan.directory ?? DIRECTORY_PLACEHOLDER, ...files);
  return ['npm run file-server --', ...args.map(shellWord)].join(' ');
}

// ------------------------------------------------------------------ files

/** A refusal or a failure: exit 1 with `cert: error: ...`. */
class CertError extends Error {}

function makeCaHint(data: string): string {
  return `run npm start once first (it makes one), or npm run cert -- init${data === 'data' ? '' : ` --data ${shellWord(data)}`}`;
}

/** The CA in DATA/tls, which `cert issue` uses but never makes. */
async function existingCa(data: string): Promise<Pem> {
  const tlsDir = tlsDirOf(data);
  const certPem = await readIfExists(join(tlsDir, CA_CERT_FILE));
  const keyPem = await readIfExists(join(tlsDir, CA_KEY_FILE));
  if (!certPem && !keyPem) {
    throw new CertError(`there is no cluster CA in ${tlsDir} yet: ${makeCaHint(data)}`);
  }
  if (!certPem || !keyPem) {
    throw new CertError(`${tlsDir} has ${certPem ? CA_CERT_FILE : CA_KEY_FILE} but not ${certPem ? CA_KEY_FILE : CA_CERT_FILE}; the CA cannot sign without both`);
  }
  return { certPem: certPem.toString(), keyPem: keyPem.toString() };
}

async function exists(path: string): Promise<boolean> {
  return (await readIfExists(path)) !== null;
}

async function issue(plan: IssuePlan): Promise<void> {
  const tlsDir = tlsDirOf(plan.data);
  const ca = await existingCa(plan.data);
  const names = issuedFileNames(plan.id);
  const paths = { cert: join(plan.out, names.cert), key: join(plan.out, names.key), ca: join(plan.out, names.ca) };
  if (resolve(paths.ca) === resolve(tlsDir, CA_CERT_FILE)) throw new CertError(`--out ${plan.out} is the CA's own folder; issue to another folder (the default is ${join(tlsDir, ISSUED_DIR, plan.id)})`);
  if (!plan.force) {
    const there = [];
    for (const path of [paths.cert, paths.key, paths.ca]) if (await exists(path)) there.push(path);
    if (there.length > 0) throw new CertError(`${there.join(', ')} ${there.length === 1 ? 'exists' : 'exist'} already; give --force to replace ${there.length === 1 ? 'it' : 'them'} (a new key and certificate)`);
  }
  const pem = await issueServiceCert(ca, { role: plan.role, id: plan.id }, plan.hosts);
  await mkdir(plan.out, { recursive: true, mode: 0o700 });
  await writeFileDurably(paths.key, pem.keyPem, { mode: PRIVATE_FILE_MODE });
  await writeFileDurably(paths.cert, pem.certPem);
  await writeFileDurably(paths.ca, ca.certPem);
  const validTo = new Date(Date.parse(new X509Certificate(pem.certPem).validTo)).toISOString().slice(0, 10);
  const folder = basename(resolve(plan.out));
  const out = process.stdout;
  out.write(`issued the certificate of ${plan.role} ${plan.id} for ${plan.hosts.join(', ')}, valid until ${validTo}, signed by the CA in ${tlsDir}:\n`);
  out.write(`  ${paths.cert}\n  ${paths.key}   (its private key, mode 0600: keep it secret)\n  ${paths.ca}   (the CA's certificate; the CA key stays in ${tlsDir})\n\n`);
  out.write(`Copy the folder ${plan.out} into the dfs folder on the other machine (e.g. scp -r ${shellWord(plan.out)} ${urlHost(plan.hosts[0]!)}:dfs/), then run there, in the dfs folder:\n\n`);
  out.write(`  ${remoteCommand(plan)}\n\n`);
  if (plan.role === 'file-server' && plan.directory === null) out.write(`(replace THIS-HOST with the name the other machine reaches the directory by, or give --directory URL here)\n`);
  if (folder !== plan.id) out.write(`(the paths above expect the folder to be called ${folder} there)\n`);
}

async function init(plan: InitPlan): Promise<void> {
  const tlsDir = tlsDirOf(plan.data);
  const ca = await ensureCa(tlsDir);
  if (ca.created) {
    process.stdout.write(`made a new cluster CA: ${join(tlsDir, CA_CERT_FILE)} (its key ${join(tlsDir, CA_KEY_FILE)}, mode 0600, never leaves this machine)\n`);
  } else {
    process.stdout.write(`the cluster CA exists already: ${join(tlsDir, CA_CERT_FILE)}; nothing done\n`);
  }
}

/** The names and addresses in a certificate's subjectAltName, as they would be given to --host. */
export function hostsOf(cert: X509Certificate): string[] {
  if (!cert.subjectAltName) return [];
  return cert.subjectAltName.split(', ').map((entry) => entry.replace(/^(DNS|IP Address):/, ''));
}

function when(text: string): string {
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? text : new Date(ms).toISOString().replace('.000Z', 'Z');
}

/** What `cert show` prints about one certificate. */
export function describeCertificate(path: string, cert: X509Certificate, ca: X509Certificate | null, now = Date.now()): string {
  const identity = identityOfCertificate(cert);
  const isCa = cert.ca;
  const who = identity ? describeIdentity(identity) : isCa ? `a CA (${cert.subject.split('\n').join(', ')})` : `${describeIdentity(null)} (${cert.subject.split('\n').join(', ')})`;
  const from = Date.parse(cert.validFrom);
  const to = Date.parse(cert.validTo);
  const state = now < from ? '  NOT YET VALID' : now > to ? '  EXPIRED' : '';
  let issuer: string;
  if (!ca) issuer = `${cert.issuer.split('\n').join(', ')} (no cluster CA to check it against)`;
  else if (cert.checkIssued(ca) && cert.verify(ca.publicKey)) issuer = cert.fingerprint256 === ca.fingerprint256 ? 'itself: this is the cluster CA' : 'this cluster CA';
  else issuer = `NOT this cluster CA, but ${cert.issuer.split('\n').join(', ')}`;
  const hosts = hostsOf(cert);
  return [
    path,
    `  identity  ${who}`,
    `  hosts     ${hosts.length > 0 ? hosts.join(', ') : '-'}`,
    `  valid     ${when(cert.validFrom)} to ${when(cert.validTo)}${state}`,
    `  issuer    ${issuer}`,
  ].join('\n');
}

async function show(plan: ShowPlan): Promise<void> {
  const tlsDir = tlsDirOf(plan.data);
  const caPem = await readIfExists(join(tlsDir, CA_CERT_FILE));
  const ca = caPem ? new X509Certificate(caPem) : null;
  let files = plan.files;
  if (files.length === 0) {
    let entries: string[];
    try {
      entries = await readdir(tlsDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new CertError(`there is no ${tlsDir} yet: ${makeCaHint(plan.data)}`);
      throw err;
    }
    // The CA first, then the services by name, then what `cert issue` wrote to its default
    // folders (without their copies of ca.crt).
    files = entries
      .filter((name) => name.endsWith('.crt'))
      .sort((a, b) => (a === CA_CERT_FILE ? -1 : b === CA_CERT_FILE ? 1 : a.localeCompare(b)))
      .map((name) => join(tlsDir, name));
    const issuedDir = join(tlsDir, ISSUED_DIR);
    for (const folder of (await readdir(issuedDir).catch(() => [] as string[])).sort()) {
      const names = await readdir(join(issuedDir, folder)).catch(() => [] as string[]);
      for (const name of names.sort()) if (name.endsWith('.crt') && name !== CA_CERT_FILE) files.push(join(issuedDir, folder, name));
    }
    if (files.length === 0) throw new CertError(`${tlsDir} holds no certificate (.crt file)`);
  }
  const failed: string[] = [];
  const parts: string[] = [];
  for (const file of files) {
    let cert: X509Certificate;
    try {
      const pem = await readIfExists(file);
      if (!pem) throw new Error('no such file');
      cert = new X509Certificate(pem);
    } catch (err) {
      failed.push(`${file}: ${(err as Error).message}`);
      continue;
    }
    parts.push(describeCertificate(file, cert, ca));
  }
  if (parts.length > 0) process.stdout.write(parts.join('\n\n') + '\n');
  if (failed.length > 0) throw new CertError(`cannot read ${failed.length === 1 ? 'a certificate' : `${failed.length} certificates`}: ${failed.join('; ')}`);
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  let plan: Plan;
  try {
    plan = parsePlan(process.argv.slice(2));
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`cert: ${err.message}\nrun npm run cert -- --help for the options\n`);
      process.exit(2);
    }
    process.stderr.write(`cert: error: ${(err as Error).message}\n`);
    process.exit(1);
  }
  try {
    if (plan.command === 'help') process.stdout.write(USAGE + '\n');
    else if (plan.command === 'issue') await issue(plan);
    else if (plan.command === 'init') await init(plan);
    else await show(plan);
  } catch (err) {
    process.stderr.write(`cert: error: ${(err as Error).message}\n`);
    process.exit(1);
  }
}

function isMain(): boolean {
  if (!process.argv[1]) return false;
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) await main();
