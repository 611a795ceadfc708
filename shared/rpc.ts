/**
 * The request/response layer every process speaks, over one WebSocket per peer. One file per
 * concept under shared/rpc/: limits.ts (the numbers and the handshake), connection.ts (one peer:
 * calls, answers, events, streams, pings), incoming-stream.ts (receiving a stream and granting
 * its sender credit), handler.ts (what a service writes), server.ts (opening connections, both
 * ends). docs/PROTOCOL.md describes the wire.
 */
export { RpcConnection, type CallOptions, type ConnectionOptions, type Response } from './rpc/connection.js';
export { IncomingStream } from './rpc/incoming-stream.js';
export { Reply, op, type CallContext, type Handler, type Handlers } from './rpc/handler.js';
export { RpcServer, checkUrl, connect, type ConnectOptions, type Expected, type ServerOptions } from './rpc/server.js';
export {
  DEFAULT_CALL_TIMEOUT_MS,
  DEFAULT_CHUNK_BYTES,
  DEFAULT_DEAD_AFTER_MS,
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_PING_INTERVAL_MS,
  DEFAULT_WINDOW_BYTES,
} from './rpc/limits.js';
