// Encrypts a cached token-endpoint answer with a key derived (HKDF-SHA256) from the refresh token
// that produced it, so the coalescing cache holds nothing usable without the token itself.

/** A token-endpoint answer as the router replays it. */
export interface Answer {
  /** HTTP status from the engine. */
  status: number;
  /** Response headers worth replaying (content type, cache control), lower-case names. */
  headers: Record<string, string>;
  /** Response body (JSON text with the new tokens). */
  body: string;
}

/** An encrypted answer: AES-256-GCM ciphertext, its IV and the HKDF salt, all base64. */
export interface SealedAnswer {
  /** HKDF salt (random per answer). */
  salt: string;
  /** AES-GCM IV (96 bits, random). */
  iv: string;
  /** Ciphertext with the GCM tag. */
  data: string;
  /** Epoch milliseconds after which the answer is no longer replayed. */
  expires: number;
}

const INFO = new TextEncoder().encode('pg-bluegreen refresh coalescing v1');

function b64(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function unb64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

async function deriveKey(token: string, salt: Uint8Array): Promise<CryptoKey> {
  const ikm = await crypto.subtle.importKey('raw', new TextEncoder().encode(token), 'HKDF', false, ['deriveKey']);
  return crypto.subtle.deriveKey({ name: 'HKDF', hash: 'SHA-256', salt, info: INFO }, ikm, { name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
}

/** Encrypts an answer under a key derived from `token`; the expiry is bound as associated data. */
export async function sealAnswer(token: string, answer: Answer, expires: number): Promise<SealedAnswer> {
  const salt = crypto.getRandomValues(new Uint8Array(16));
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const key = await deriveKey(token, salt);
  const plain = new TextEncoder().encode(JSON.stringify(answer));
  const data = await crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: new TextEncoder().encode(String(expires)) }, key, plain);
  return { salt: b64(salt), iv: b64(iv), data: b64(new Uint8Array(data)), expires };
}

/** Decrypts an answer sealed for `token`; null when the token does not open it (or it was altered). */
export async function openAnswer(token: string, sealed: SealedAnswer): Promise<Answer | null> {
  try {
    const key = await deriveKey(token, unb64(sealed.salt));
    const plain = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: unb64(sealed.iv), additionalData: new TextEncoder().encode(String(sealed.expires)) }, key, unb64(sealed.data));
    return JSON.parse(new TextDecoder().decode(plain)) as Answer;
  } catch {
    return null;
  }
}
