// How a message body travels through the Queues HTTP pull API. Cloudflare's pull-consumer docs
// (developers.cloudflare.com/queues/configuration/pull-consumers/#content-types): the content type a
// message was sent with is in `metadata["CF-Content-Type"]`; `json` (the default, and what the router
// sends) and `bytes` arrive base64-encoded (RFC 4648), `text` as plain UTF-8, and `v8` cannot be
// decoded outside Workers. Both directions live here so the fake (local.ts) puts on the wire exactly
// what the client (http.ts) must take apart, and neither can drift from the other unseen.

/** Content types a producer can send with (`QueuesContentType` in the Workers API). */
export type QueueContentType = 'json' | 'text' | 'bytes' | 'v8';

/** A body as the pull API delivers it. */
export interface WireBody {
  /** The body field of a pulled message: base64 for json/bytes, plain text for text. */
  body: string;
  /** The metadata field; `CF-Content-Type` names the content type. */
  metadata: Record<string, string>;
}

/** What decoding a pulled body gave: the value, or why it could not be read. */
export type DecodedBody = { ok: true; value: unknown } | { ok: false; detail: string };

/** The metadata key that carries the content type. */
export const CONTENT_TYPE_KEY = 'CF-Content-Type';

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Encodes `value` the way the pull API delivers a message sent with `contentType`. */
export function encodeForPull(value: unknown, contentType: QueueContentType): WireBody {
  const metadata = { 'CF-sourceMessageSource': 'worker', [CONTENT_TYPE_KEY]: contentType };
  if (contentType === 'text') {
    if (typeof value !== 'string') throw new TypeError('a text message body must be a string');
    return { body: value, metadata };
  }
  if (contentType === 'bytes') {
    if (!(value instanceof Uint8Array)) throw new TypeError('a bytes message body must be a Uint8Array');
    return { body: Buffer.from(value).toString('base64'), metadata };
  }
  // json, and v8 (whose real encoding is the Workers runtime's own: opaque to a pull consumer either way).
  const json = JSON.stringify(value);
  if (json === undefined) throw new TypeError('a json message body must be JSON-serialisable');
  return { body: Buffer.from(json, 'utf8').toString('base64'), metadata };
}

function base64Text(body: unknown, contentType: string): string | { detail: string } {
  if (typeof body !== 'string') return { detail: `a ${contentType} body must be a base64 string, got ${typeof body}` };
  if (!BASE64.test(body)) return { detail: `a ${contentType} body is not base64 (RFC 4648)` };
  try {
    return utf8.decode(Buffer.from(body, 'base64'));
  } catch {
    return { detail: `a ${contentType} body does not decode to UTF-8 text` };
  }
}

function parseJson(text: string, what: string): DecodedBody {
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch {
    return { ok: false, detail: `${what} is not JSON` };
  }
}

/** Decodes a pulled body by its `CF-Content-Type`; our messages are JSON whatever they were sent as. */
export function decodePulledBody(body: unknown, metadata: unknown): DecodedBody {
  const contentType = metadata && typeof metadata === 'object' ? (metadata as Record<string, unknown>)[CONTENT_TYPE_KEY] : undefined;
  switch (contentType) {
    case 'json':
    case 'bytes': {
      const text = base64Text(body, contentType);
      return typeof text === 'string' ? parseJson(text, `the decoded ${contentType} body`) : { ok: false, ...text };
    }
    case 'text':
      return typeof body === 'string' ? parseJson(body, 'the text body') : { ok: false, detail: `a text body must be a string, got ${typeof body}` };
    case 'v8':
      return { ok: false, detail: 'the message was sent with content type v8, which a pull consumer cannot decode; the producer must send json' };
    case undefined:
      // No metadata (older API answers, hand-made test servers): accept a body that is plain JSON.
      return typeof body === 'string' ? parseJson(body, 'the body (no CF-Content-Type)') : { ok: true, value: body };
    default:
      return { ok: false, detail: `unknown CF-Content-Type ${JSON.stringify(contentType)}` };
  }
}
