// The revocation message: one versioned, zod-checked, HMAC-SHA256-signed shape shared by the edge
// router (producer), the consumer Worker and `migrate drain`. It carries only what the database
// stores (a token's signature, request id, subject, client), never a raw token. Runs unchanged in
// workerd and Node (WebCrypto only).

import { z } from 'zod';

/** What happened: a token revoked, a consent revoked, or a refresh token rotated away. */
export const REVOCATION_KINDS = ['token-revoke', 'consent-revoke', 'refresh-rotate'] as const;

/** The signed body of a revocation event. */
export const revocationBodySchema = z.strictObject({
  v: z.literal(1),
  id: z.string().min(8).max(64).describe('event id; replay deduplicates on it'),
  kind: z.enum(REVOCATION_KINDS),
  at: z.iso.datetime({ offset: true }).describe('when the revocation succeeded at the engine'),
  signature: z.string().min(1).max(512).optional().describe('token signature as stored in the signature column'),
  requestId: z.string().min(1).max(255).optional(),
  subject: z.string().min(1).max(255).optional(),
  client: z.string().min(1).max(255).optional(),
}).refine((b) => (b.kind === 'consent-revoke' ? !!b.subject : !!(b.signature || b.requestId)), {
  message: 'token-revoke and refresh-rotate need signature or requestId; consent-revoke needs subject',
});

/** A revocation event body. */
export type RevocationBody = z.infer<typeof revocationBodySchema>;

/** What travels on the queue: the body and its MAC (hex HMAC-SHA256 of the canonical body). */
export const envelopeSchema = z.strictObject({
  body: z.unknown(),
  mac: z.string().regex(/^[0-9a-f]{64}$/, 'mac must be 64 hex characters'),
});

/** A signed envelope as sent on the queue. */
export interface Envelope {
  /** The event. */
  body: RevocationBody;
  /** Hex HMAC-SHA256 over `canonicalJson(body)`. */
  mac: string;
}

/** JSON with keys sorted at every level, so producer and verifier sign the same bytes. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

async function hmacKey(secret: string): Promise<CryptoKey> {
  return crypto.subtle.importKey('raw', new TextEncoder().encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
}

function toHex(buf: ArrayBuffer): string {
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function fromHex(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** Signs a body (validated first) with the shared secret. */
export async function signRevocation(body: RevocationBody, secret: string): Promise<Envelope> {
  const checked = revocationBodySchema.parse(body);
  const mac = toHex(await crypto.subtle.sign('HMAC', await hmacKey(secret), new TextEncoder().encode(canonicalJson(checked))));
  return { body: checked, mac };
}

/** Why a message was rejected (it goes to the dead-letter queue with this reason). */
export type RejectReason = 'malformed' | 'bad-signature' | 'invalid-body';

/** Outcome of verifying a message from the queue. */
export type VerifyResult = { ok: true; body: RevocationBody } | { ok: false; reason: RejectReason; detail: string };

/** Checks envelope shape, MAC (constant time, via WebCrypto verify) and body schema, in that order. */
export async function verifyRevocation(message: unknown, secret: string): Promise<VerifyResult> {
  const envelope = envelopeSchema.safeParse(message);
  if (!envelope.success) return { ok: false, reason: 'malformed', detail: envelope.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ') };
  const valid = await crypto.subtle.verify('HMAC', await hmacKey(secret), fromHex(envelope.data.mac), new TextEncoder().encode(canonicalJson(envelope.data.body)));
  if (!valid) return { ok: false, reason: 'bad-signature', detail: 'mac does not match the body (forged or signed with another key)' };
  const body = revocationBodySchema.safeParse(envelope.data.body);
  if (!body.success) return { ok: false, reason: 'invalid-body', detail: body.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ') };
  return { ok: true, body: body.data };
}
