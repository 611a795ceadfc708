/**
 * Size limits shared by clients and servers, kept apart from the zod schemas so that a
 * one-shot client does not pay for loading zod.
 */

/** Content up to this size travels inline in one message; larger content as a stream. */
export const INLINE_CONTENT_BYTES = 1 << 20;
