/**
 * Imported first by the file server's main. Every durable write holds a libuv pool thread in
 * fdatasync or fsync for about a millisecond; with the default 4 threads, eight concurrent
 * writers queue behind each other's syncs. The pool is created on first use, so setting its size
 * here, before any file work, takes effect.
 */
process.env.UV_THREADPOOL_SIZE ??= '16';
