// The shared message module (src/queue-consumer/message.ts) names WebCrypto's global `CryptoKey`,
// which workers-types declare but @types/node 20 does not; drain imports that module under Node's
// types, so the name is declared here as Node's own webcrypto CryptoKey.

declare global {
  /** WebCrypto key, as Node exposes it on globalThis.crypto. */
  type CryptoKey = import('node:crypto').webcrypto.CryptoKey;
}

export {};
