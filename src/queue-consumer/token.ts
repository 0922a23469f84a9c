// What the router may know about a token without keeping it: the part the database stores (Hydra
// keeps `<nonce>.<signature>` tokens by their signature) and one-way hashes for keys and ids.

/** The signature part of a Hydra-style token (`<prefix>_<nonce>.<signature>`), or null when it has none. */
export function tokenSignature(token: string): string | null {
  const dot = token.lastIndexOf('.');
  if (dot < 0 || dot === token.length - 1) return null;
  return token.slice(dot + 1);
}

/** Lower-case hex SHA-256 of a string. */
export async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}
