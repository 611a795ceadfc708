/**
 * A bare WebSocket server, in a process of its own, for the machine's network limits: what the
 * plain `ws` package does between two node processes with nothing of ours on top.
 *
 *   node dist/bench/echo-server.js      prints "listening PORT" once it accepts connections
 *
 * Every message is echoed back as it came, except text commands (JSON starting with `{"cmd"`):
 * - `{"cmd":"sink","bytes":N}`: the next N bytes of binary messages are counted, not echoed,
 *   and answered with the text `done` once all have arrived (client→server transfer);
 * - `{"cmd":"source","bytes":N,"chunk":C}`: N bytes are sent in binary messages of C bytes,
 *   pausing while more than 8 MiB sit in ws's send buffer, then the text `done`
 *   (server→client transfer).
 */
import { randomBytes } from 'node:crypto';
import { WebSocketServer, type WebSocket } from 'ws';

/** The same window the RPC layer allows a stream (shared/rpc.ts DEFAULT_WINDOW_BYTES). */
const HIGH_WATER_BYTES = 8 << 20;

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: 64 << 20, clientTracking: false });

/** Sends `bytes` in `chunk`-byte messages, waiting for ws to flush whenever its buffer is full. */
async function source(ws: WebSocket, bytes: number, chunk: number): Promise<void> {
  const block = randomBytes(chunk);
  for (let sent = 0; sent < bytes; sent += chunk) {
    const piece = bytes - sent >= chunk ? block : block.subarray(0, bytes - sent);
    if (ws.bufferedAmount + piece.length > HIGH_WATER_BYTES) {
      // The send callback fires once this message has been handed to the socket.
      await new Promise<void>((resolve, reject) => ws.send(piece, (err) => (err ? reject(err) : resolve())));
    } else {
      ws.send(piece);
    }
  }
  ws.send('done');
}

wss.on('connection', (ws) => {
  let sinkLeft = 0;
  ws.on('message', (data: Buffer, isBinary: boolean) => {
    if (isBinary && sinkLeft > 0) {
      sinkLeft -= data.length;
      if (sinkLeft <= 0) ws.send('done');
      return;
    }
    if (!isBinary && data[0] === 0x7b && data.includes('"cmd"')) {
      const command = JSON.parse(data.toString('utf8')) as { cmd: string; bytes: number; chunk?: number };
      if (command.cmd === 'sink') sinkLeft = command.bytes;
      else if (command.cmd === 'source') void source(ws, command.bytes, command.chunk ?? 1 << 20).catch(() => ws.terminate());
      return;
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('error', () => ws.terminate());
});

wss.on('listening', () => {
  const address = wss.address();
  process.stdout.write(`listening ${typeof address === 'object' && address !== null ? address.port : 0}\n`);
});

// The benchmark stops this process by PID with SIGTERM.
process.on('SIGTERM', () => process.exit(0));
