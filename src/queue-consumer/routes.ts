// Which OAuth requests remove access, and what a revocation message may say about them. Paths
// follow Hydra: public /oauth2/revoke and /oauth2/token, admin consent revocation under
// /oauth2/auth/sessions/consent (v1) and /admin/oauth2/auth/sessions/consent (v2).

/** How the router treats a request. */
export type Route = 'token-revoke' | 'consent-revoke' | 'token' | 'proxy';

/** Classifies a request by method and path; everything else is proxied untouched. */
export function classify(method: string, pathname: string): Route {
  const path = pathname.replace(/\/+$/, '');
  if (method === 'POST' && path === '/oauth2/revoke') return 'token-revoke';
  if (method === 'POST' && path === '/oauth2/token') return 'token';
  if (method === 'DELETE' && (path === '/oauth2/auth/sessions/consent' || path === '/admin/oauth2/auth/sessions/consent')) return 'consent-revoke';
  return 'proxy';
}

/** The OAuth client of a request: HTTP Basic credentials first, then `client_id` in the form. */
export function clientOf(authorization: string | null, form: URLSearchParams): string | undefined {
  const basic = authorization?.match(/^Basic\s+(.+)$/i)?.[1];
  if (basic) {
    try {
      const user = atob(basic).split(':')[0];
      if (user) return decodeURIComponent(user.replace(/\+/g, ' '));
    } catch {
      // not valid base64: fall through to the form
    }
  }
  return form.get('client_id') || undefined;
}
