/**
 * One line per event: `<ISO time> <service> <level> <message> key=value ...`, on stdout, so that
 * `start.ts` can prefix and interleave the lines of several services and a person can grep them.
 */
export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const rank: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export interface Logger {
  readonly name: string;
  error(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  debug(message: string, fields?: Record<string, unknown>): void;
  enabled(level: LogLevel): boolean;
}

export function isLogLevel(value: string): value is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(value);
}

function formatValue(value: unknown): string {
  if (value instanceof Error) return JSON.stringify(value.message);
  if (typeof value === 'string') return /^[\w.:/@+-]+$/.test(value) ? value : JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean' || value === null || value === undefined) return String(value);
  return JSON.stringify(value);
}

export function formatLine(name: string, level: LogLevel, message: string, fields?: Record<string, unknown>, now = new Date()): string {
  let line = `${now.toISOString()} ${name} ${level} ${message}`;
  if (fields) for (const [key, value] of Object.entries(fields)) if (value !== undefined) line += ` ${key}=${formatValue(value)}`;
  return line;
}

export function createLogger(name: string, level: LogLevel = 'info', write: (line: string) => void = (line) => process.stdout.write(line + '\n')): Logger {
  const at = (l: LogLevel) => (message: string, fields?: Record<string, unknown>) => {
    if (rank[l] <= rank[level]) write(formatLine(name, l, message, fields));
  };
  return {
    name,
    error: at('error'),
    warn: at('warn'),
    info: at('info'),
    debug: at('debug'),
    enabled: (l) => rank[l] <= rank[level],
  };
}

/** A logger that drops everything: for libraries used inside the client and for unit tests. */
export const silentLogger: Logger = createLogger('silent', 'error', () => {});
