/**
 * The version store of one file server: every file it holds, at its current version, in one
 * folder, with an in-memory index rebuilt from the folder at start.
 *
 * A new version is staged in a temp file (content written and fdatasync'ed), then committed by
 * renaming it to its version name and fsyncing the folder. Until the rename the old version is
 * current; after the folder fsync the new one is, durably. Old versions are unlinked after the
 * commit; leftovers from a crash (temps, older versions) are swept at the next start.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { mkdir, open, readdir, rename, stat, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { fsyncDir } from '../../shared/durable.js';
import { eachLimited } from '../../shared/concurrency.js';
import { DfsError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { WriteMode } from '../../shared/protocol.js';
import { EMPTY_SHA256, HEADER_BYTES, decodeHeader, encodeHeader, nameKey, parseVersionFileName, versionFileName, type VersionHeader } from './version-file.js';

export interface StoredVersion extends VersionHeader {
  path: string;
}

const READ_CHUNK_BYTES = 1 << 20;
/** Folder (beside store/) for copies the directory stopped assigning here. */
export const ORPHAN_FOLDER = 'orphaned';
/** Suffix of a version file set aside because it failed its checks. */
const DAMAGED_SUFFIX = '.damaged';
/** How long an orphaned copy is kept before a start removes it. */
export const ORPHAN_KEEP_MS = 7 * 86_400_000;
/** Version headers read at once when the store loads: a start with 100,000 files takes seconds, not minutes. */
const LOAD_CONCURRENCY = 32;


/** Coalesces folder fsyncs: commits that arrive while one is running share the next one. */
class FolderSyncer {
  private running: Promise<void> | null = null;
  private next: Promise<void> | null = null;

  constructor(private readonly handle: FileHandle) {}

  sync(): Promise<void> {
    if (!this.running) {
      this.running = this.handle.sync().finally(() => (this.running = null));
      return this.running;
    }
    if (!this.next) {
      this.next = this.running.then(() => {
        this.next = null;
        return this.sync();
      });
    }
    return this.next;
  }
}

/** Content up to this size is held back and written together with the header at seal. */
const COALESCE_BYTES = 256 * 1024;

export class StagedVersion {
  size = 0;
  private readonly hash: Hash = createHash('sha256');
  private closed = false;
  /** Bytes not yet written, starting at content offset `written`. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private written = 0;

  constructor(
    readonly name: string,
    readonly epoch: number,
    readonly version: number,
    readonly tempPath: string,
    private readonly handle: FileHandle,
  ) {}

  async write(chunk: Buffer): Promise<void> {
    if (chunk.length === 0) return;
    this.hash.update(chunk);
    this.size += chunk.length;
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    // Small content waits for the header, so a small write costs one write call, not two.
    if (this.pendingBytes > COALESCE_BYTES) await this.flush(null);
  }

  /** Writes content that came as a stream or as one body; returns how many bytes it was. */
  async writeAll(stream: AsyncIterable<Buffer> | undefined, body: Buffer | undefined): Promise<number> {
    let received = 0;
    if (stream) {
      for await (const chunk of stream) {
        received += chunk.length;
        await this.write(chunk);
      }
    } else if (body) {
      received = body.length;
      await this.write(body);
    }
    return received;
  }

  private async flush(header: Buffer | null): Promise<void> {
    const withHeader = header !== null && this.written === 0;
    let queue = withHeader ? [header, ...this.pending] : this.pending;
    let position = withHeader ? 0 : HEADER_BYTES + this.written;
    let remaining = queue.reduce((n, b) => n + b.length, 0);
    while (remaining > 0) {
      const { bytesWritten } = await this.handle.writev(queue, position);
      position += bytesWritten;
      remaining -= bytesWritten;
      queue = skipBytes(queue, bytesWritten);
    }
    this.written += this.pendingBytes;
    this.pending = [];
    this.pendingBytes = 0;
    if (header !== null && !withHeader) await this.handle.write(header, 0, HEADER_BYTES, 0);
  }

  /** Writes the header and makes the temp file durable. The version is not current until committed. */
  async seal(fields: { mtime: number; token: number; requestId: string; placementEpoch: number }): Promise<VersionHeader> {
    const header: VersionHeader = {
      name: this.name,
      epoch: this.epoch,
      version: this.version,
      size: this.size,
      sha256: this.hash.digest('hex'),
      ...fields,
    };
    await this.flush(encodeHeader(header));
    await this.handle.datasync();
    // Closing after the data is durable cannot lose anything; it need not hold up the commit.
    void this.close().catch(() => {});
    return header;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }

  async discard(): Promise<void> {
    await this.close().catch(() => {});
    await unlink(this.tempPath).catch(() => {});
  }
}

/** The buffers left after the first `count` bytes of `buffers` were written. */
function skipBytes(buffers: Buffer[], count: number): Buffer[] {
  const rest: Buffer[] = [];
  for (const b of buffers) {
    if (count >= b.length) {
      count -= b.length;
      continue;
    }
    rest.push(count > 0 ? b.subarray(count) : b);
    count = 0;
  }
  return rest;
}

export class FileStore {
  private readonly index = new Map<string, StoredVersion>();
  private syncer!: FolderSyncer;
  private orphanDir = '';
  /** Name key → the highest version of it ever set aside as damaged (from the `.damaged` files). */
  private readonly lost = new Map<string, number>();
  /** Name keys of copies set aside as damaged whose file has not been recovered or reconciled since. */
  private readonly unrecovered = new Set<string>();
  private folderHandle!: FileHandle;

  private constructor(
    readonly dir: string,
    private readonly log: Logger,
  ) {}

  /** Opens the store, rebuilding the index and sweeping what a crash left behind. */
  static async open(dataDir: string, log: Logger): Promise<FileStore> {
    const dir = join(dataDir, 'store');
    await mkdir(dir, { recursive: true });
    const store = new FileStore(dir, log);
    store.orphanDir = join(dataDir, ORPHAN_FOLDER);
    store.folderHandle = await open(dir, 'r');
    store.syncer = new FolderSyncer(store.folderHandle);
    await store.load();
    await store.sweepOrphans();
    return store;
  }

  /** Orphans kept longer than ORPHAN_KEEP_MS go for good. */
  private async sweepOrphans(): Promise<void> {
    let files: string[];
    try {
      files = await readdir(this.orphanDir);
    } catch {
      return;
    }
    const cutoff = Date.now() - ORPHAN_KEEP_MS;
    let removed = 0;
    await eachLimited(files, LOAD_CONCURRENCY, async (file) => {
      const path = join(this.orphanDir, file);
      const info = await stat(path).catch(() => null);
      if (info && info.mtimeMs < cutoff) {
        await unlink(path).catch(() => {});
        removed++;
      }
    });
    if (removed > 0) this.log.info('removed orphaned copies older than their keeping time', { removed, keptDays: ORPHAN_KEEP_MS / 86_400_000 });
  }

  private async load(): Promise<void> {
    const newest = new Map<string, { file: string; epoch: number; version: number }>();
    const sweep: string[] = [];
    for (const file of await readdir(this.dir)) {
      if (file.endsWith(DAMAGED_SUFFIX)) {
        // Kept for a person to inspect; its file is unrecovered until an intact version exists.
        const parsed = parseVersionFileName(file.slice(0, -DAMAGED_SUFFIX.length));
        if (parsed) this.noteLost(parsed.key, parsed.version);
        continue;
      }
      const parsed = parseVersionFileName(file);
      if (!parsed) {
        sweep.push(file); // temps of writes that never committed
        continue;
      }
      const best = newest.get(parsed.key);
      if (!best || parsed.epoch > best.epoch || (parsed.epoch === best.epoch && parsed.version > best.version)) {
        if (best) sweep.push(best.file);
        newest.set(parsed.key, { file, epoch: parsed.epoch, version: parsed.version });
      } else {
        sweep.push(file);
      }
    }
    await eachLimited(sweep, LOAD_CONCURRENCY, (file) => unlink(join(this.dir, file)).catch(() => {}));
    await eachLimited([...newest], LOAD_CONCURRENCY, async ([key, { file, epoch, version }]) => {
      const path = join(this.dir, file);
      try {
        const header = await readHeader(path);
        if (nameKey(header.name) !== key || header.epoch !== epoch || header.version !== version) throw new Error('header does not match the file name');
        this.index.set(header.name, { ...header, path });
      } catch (err) {
        // A damaged copy is set aside, not served: it is fetched again from another copy.
        this.log.error('damaged version file set aside', { file, error: (err as Error).message });
        await rename(path, `${path}${DAMAGED_SUFFIX}`).catch(() => {});
        this.noteLost(key, version);
        newest.delete(key);
      }
    });
    // Unrecovered: a version was set aside and nothing as new is stored.
    for (const [key, version] of this.lost) if ((newest.get(key)?.version ?? 0) < version) this.unrecovered.add(key);
    if (sweep.length > 0) await this.syncer.sync();
  }

  get count(): number {
    return this.index.size;
  }

  /**
   * Whether this server's copy of `name` was found damaged and set aside, and the file has not
   * been recovered (or reconciled with the other copies) since: what it reads as here is not it.
   */
  isDamaged(name: string): boolean {
    return this.unrecovered.size > 0 && this.unrecovered.has(nameKey(name));
  }

  /**
   * Treats this server's copy of `name` as lost until recovered from another copy: a fresh data
   * folder holds nothing of the files it is primary of, whatever version 0 would suggest.
   */
  markUnrecovered(name: string): void {
    this.unrecovered.add(nameKey(name));
  }

  /** The file was recovered, or there is nothing left to recover it from. */
  markRecovered(name: string): void {
    if (this.unrecovered.size > 0) this.unrecovered.delete(nameKey(name));
  }

  /**
   * The highest version of `name` ever set aside as damaged (0 if none). New versions are
   * numbered above it, so that a version number lost with a damaged copy, which a client may
   * still have cached, is never given to other content.
   */
  lostVersion(name: string): number {
    return this.lost.size > 0 ? (this.lost.get(nameKey(name)) ?? 0) : 0;
  }

  private noteLost(key: string, version: number): void {
    this.lost.set(key, Math.max(version, this.lost.get(key) ?? 0));
  }

  names(): IterableIterator<string> {
    return this.index.keys();
  }

  get(name: string): StoredVersion | undefined {
    return this.index.get(name);
  }

  /** The current metadata for name at epoch: version 0, empty, when nothing is stored for that epoch. */
  metaFor(name: string, epoch: number): VersionHeader {
    const stored = this.index.get(name);
    if (stored && stored.epoch === epoch) return stored;
    return { name, epoch, version: 0, size: 0, sha256: EMPTY_SHA256, mtime: 0, token: 0, requestId: '', placementEpoch: 1 };
  }

  /**
   * Starts a new version. In append mode the current content of the same epoch is copied in
   * first, so the staged file is the whole new content.
   */
  async stage(name: string, epoch: number, version: number, mode: WriteMode): Promise<StagedVersion> {
    const tempPath = join(this.dir, `${nameKey(name)}.${epoch}.${version}.${randomBytes(4).toString('hex')}.tmp`);
    const handle = await open(tempPath, 'wx');
    const staged = new StagedVersion(name, epoch, version, tempPath, handle);
    try {
      const base = this.index.get(name);
      if (mode === 'append' && base && base.epoch === epoch && base.size > 0) {
        for await (const chunk of this.readContent(base)) await staged.write(chunk);
      }
    } catch (err) {
      await staged.discard();
      throw err;
    }
    return staged;
  }

  /** Makes a sealed version current, durably. */
  async commit(staged: StagedVersion, header: VersionHeader): Promise<StoredVersion> {
    const path = join(this.dir, versionFileName(nameKey(header.name), header.epoch, header.version));
    await rename(staged.tempPath, path);
    await this.syncer.sync();
    const previous = this.index.get(header.name);
    const stored: StoredVersion = { ...header, path };
    this.index.set(header.name, stored);
    if (header.version >= this.lostVersion(header.name)) this.markRecovered(header.name);
    // The superseded version goes in the background: if a crash keeps it, the next start sweeps it.
    if (previous && previous.path !== path) void unlink(previous.path).catch(() => {});
    return stored;
  }

  /** Removes every stored version of name. */
  async remove(name: string): Promise<boolean> {
    this.markRecovered(name);
    const previous = this.index.get(name);
    if (!previous) return false;
    this.index.delete(name);
    await unlink(previous.path).catch(() => {});
    await this.syncer.sync();
    return true;
  }

  /**
   * Moves a copy the directory no longer assigns here into `orphaned/` instead of deleting it:
   * the directory may have set its rows aside (a damaged table) rather than deleted the file, so
   * its content is kept for ORPHAN_KEEP_MS for a person to restore. Returns false if none.
   */
  async orphan(name: string): Promise<boolean> {
    this.markRecovered(name);
    const copy = this.index.get(name);
    if (!copy) return false;
    this.index.delete(name);
    await mkdir(this.orphanDir, { recursive: true });
    const target = join(this.orphanDir, basename(copy.path));
    await rename(copy.path, target).catch(() => {});
    // Its mtime starts the keeping time.
    const now = new Date();
    await utimes(target, now, now).catch(() => {});
    await Promise.all([this.syncer.sync(), fsyncDir(this.orphanDir)]);
    return true;
  }

  /**
   * Sets a damaged current version aside (renamed `.damaged`, kept for a person to inspect)
   * so that it is never served, and marks the file damaged until it is fetched again.
   */
  async quarantine(name: string): Promise<void> {
    const damaged = this.index.get(name);
    if (!damaged) return;
    this.index.delete(name);
    this.noteLost(nameKey(name), damaged.version);
    this.unrecovered.add(nameKey(name));
    await rename(damaged.path, `${damaged.path}${DAMAGED_SUFFIX}`).catch(() => {});
    await this.syncer.sync();
  }

  /** Reads a small file's content whole, checking it against its sha256. */
  async readAll(stored: StoredVersion): Promise<Buffer> {
    const handle = await openVersion(stored.path);
    try {
      const content = Buffer.allocUnsafe(stored.size);
      let offset = 0;
      while (offset < stored.size) {
        const { bytesRead } = await handle.read(content, offset, stored.size - offset, HEADER_BYTES + offset);
        if (bytesRead === 0) break;
        offset += bytesRead;
      }
      if (offset !== stored.size || createHash('sha256').update(content).digest('hex') !== stored.sha256) {
        throw new DfsError('CHECKSUM', `stored copy of ${stored.name} v${stored.version} is damaged`);
      }
      return content;
    } finally {
      await handle.close();
    }
  }

  /**
   * Streams a version's content. The file stays readable even if a newer version replaces it
   * meanwhile (the open handle keeps it). A damaged copy ends the stream with CHECKSUM.
   */
  async *readContent(stored: StoredVersion): AsyncIterable<Buffer> {
    const handle = await openVersion(stored.path);
    const hash = createHash('sha256');
    try {
      let offset = 0;
      while (offset < stored.size) {
        const want = Math.min(READ_CHUNK_BYTES, stored.size - offset);
        const chunk = Buffer.allocUnsafe(want);
        const { bytesRead } = await handle.read(chunk, 0, want, HEADER_BYTES + offset);
        if (bytesRead === 0) break;
        const piece = bytesRead === want ? chunk : chunk.subarray(0, bytesRead);
        hash.update(piece);
        offset += bytesRead;
        yield piece;
      }
      if (offset !== stored.size || hash.digest('hex') !== stored.sha256) {
        throw new DfsError('CHECKSUM', `stored copy of ${stored.name} v${stored.version} is damaged`);
      }
    } finally {
      await handle.close();
    }
  }

  async close(): Promise<void> {
    await this.folderHandle.close().catch(() => {});
  }
}

async function openVersion(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new DfsError('UNAVAILABLE', 'that version was just replaced; read again');
    throw err;
  }
}

async function readHeader(path: string): Promise<VersionHeader> {
  const handle = await open(path, 'r');
  try {
    const buf = Buffer.alloc(HEADER_BYTES);
    await handle.read(buf, 0, HEADER_BYTES, 0);
    const header = decodeHeader(buf);
    const { size } = await handle.stat();
    if (size !== HEADER_BYTES + header.size) throw new Error(`size ${size} does not match the header's ${header.size} + ${HEADER_BYTES}`);
    return header;
  } finally {
    await handle.close();
  }
}
