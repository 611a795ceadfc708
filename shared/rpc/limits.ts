/**
 * The numbers every connection lives by, in one place: what a peer may send us, what we may
 * send it, and how much memory one connection may make this process hold. docs/PROTOCOL.md
 * ("Limits") states the same bounds in prose.
 *
 * Each side advertises its own receive limit in the WebSocket handshake (the `x-dfs-limits`
 * header), so that a sender refuses at once, with a typed error, a message its peer would
 * refuse; a peer that does not advertise one is held to the protocol default.
 */
export { MAX_HEADER_BYTES } from '../frame.js';

/** Largest WebSocket message a connection accepts by default; ws closes with 1009 past it. */
export const DEFAULT_MAX_MESSAGE_BYTES = 4 << 20;
/** No peer may ask for messages smaller than this, or larger. */
export const MIN_PEER_MESSAGE_BYTES = 64 << 10;
export const MAX_PEER_MESSAGE_BYTES = 64 << 20;

/** Largest piece of a stream in one message. */
export const DEFAULT_CHUNK_BYTES = 1 << 20;
/**
 * Credit a stream's sender has before the receiver says anything: it may send this many bytes
 * of a new stream at once. Everything beyond is granted by the receiver's `ack` frames.
 */
export const INITIAL_STREAM_CREDIT = 256 << 10;
/** Most credit the receiver grants one incoming stream (its window). */
export const DEFAULT_WINDOW_BYTES = 4 << 20;
/** Most credit outstanding across all of one connection's incoming streams. */
export const DEFAULT_STREAM_BUDGET_BYTES = 16 << 20;
/** Incoming streams open at once on one connection; more are refused with LIMIT. */
export const DEFAULT_MAX_INCOMING_STREAMS = 64;
/** A stream piece smaller than this waits for more credit, unless it is the end of a chunk. */
export const MIN_STREAM_PIECE_BYTES = 16 << 10;

/**
 * Bytes queued for the socket past which senders wait: stream pumps pause, and handlers that
 * reserve room for a reply wait their turn.
 */
export const DEFAULT_OUTPUT_HIGH_WATER_BYTES = 8 << 20;
/** Requests being served at once on one connection past which it stops reading from the peer. */
export const DEFAULT_MAX_ACTIVE_REQUESTS = 4096;

export const DEFAULT_PING_INTERVAL_MS = 1000;
export const DEFAULT_DEAD_AFTER_MS = 4000;
export const DEFAULT_CALL_TIMEOUT_MS = 15000;
/** An HTTP upgrade not finished in this time is dropped (a half-open or stalled handshake). */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 5000;

export const LIMITS_HEADER = 'x-dfs-limits';

export interface PeerLimits {
  /** The largest message the peer accepts. */
  maxMessageBytes: number;
}

export function formatLimits(limits: PeerLimits): string {
  return `message=${limits.maxMessageBytes}`;
}

/** The limits a peer advertised, clamped to sane bounds; the protocol default when absent or garbled. */
export function parseLimits(header: string | string[] | undefined): PeerLimits {
  const text = Array.isArray(header) ? header[0] : header;
  const match = typeof text === 'string' ? /(?:^|[;,\s])message=(\d{1,12})(?:$|[;,\s])/.exec(text) : null;
  const advertised = match ? Number(match[1]) : DEFAULT_MAX_MESSAGE_BYTES;
  return { maxMessageBytes: Math.min(MAX_PEER_MESSAGE_BYTES, Math.max(MIN_PEER_MESSAGE_BYTES, advertised)) };
}

/**
 * The connection cap a server uses unless told otherwise: what the process's open-file limit
 * leaves after a reserve for its own files, at most 10,000. Read from /proc on Linux; elsewhere
 * 1,000.
 */
export async function defaultMaxConnections(): Promise<number> {
  try {
    const { readFile } = await import('node:fs/promises');
    const text = await readFile('/proc/self/limits', 'utf8');
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(text);
    if (match && match[1] !== 'unlimited') return Math.max(16, Math.min(10_000, Number(match[1]) - 128));
    if (match) return 10_000;
  } catch {
    // not Linux: fall through
  }
  return 1000;
}
