// Test-only, Hydra-shaped engine behind the router in the workerd tests: rotates refresh tokens
// (a second use of one is "reuse" and fails, as in Hydra), answers revocations with 200/204, and
// reports how often it saw each refresh token. Tokens starting with `slow` take 300 ms, so
// concurrent duplicates overlap; tokens starting with `bad` are refused with 400. Everything else is
// echoed with the host it was sent to in `x-engine-host` (which upstream the router chose);
// `/slow?ms=N` answers after N ms (a request still in flight while the fence goes up).

const seen = new Map();
let issued = 0;

export default {
  async fetch(request) {
    const url = new URL(request.url);
    const text = new TextDecoder().decode(await request.arrayBuffer());
    const form = new URLSearchParams(text);
    if (request.method === 'POST' && url.pathname === '/oauth2/token' && form.get('grant_type') === 'refresh_token') {
      const token = form.get('refresh_token') ?? '';
      const uses = (seen.get(token) ?? 0) + 1;
      seen.set(token, uses);
      if (token.startsWith('slow')) await new Promise((resolve) => setTimeout(resolve, 300));
      if (token.startsWith('bad') || uses > 1) {
        return Response.json({ error: 'invalid_grant', error_description: uses > 1 ? 'refresh token reuse; chain revoked' : 'unknown refresh token' }, { status: 400 });
      }
      issued += 1;
      return Response.json(
        { access_token: `ory_at_a${issued}.asig${issued}`, refresh_token: `ory_rt_r${issued}.rsig${issued}`, token_type: 'bearer', expires_in: 3600 },
        { headers: { 'cache-control': 'no-store' } },
      );
    }
    if (url.pathname === '/calls') return Response.json({ calls: seen.get(url.searchParams.get('token')) ?? 0 });
    if (request.method === 'POST' && url.pathname === '/oauth2/revoke') return new Response(null, { status: 200 });
    if (request.method === 'DELETE' && url.pathname.endsWith('/oauth2/auth/sessions/consent')) {
      return url.searchParams.get('subject') === 'nobody' ? Response.json({ error: 'not_found' }, { status: 404 }) : new Response(null, { status: 204 });
    }
    if (url.pathname === '/slow') await new Promise((resolve) => setTimeout(resolve, Number(url.searchParams.get('ms') ?? 0)));
    return Response.json({ proxied: `${request.method} ${url.pathname}${url.search}` }, { headers: { 'x-engine-host': url.host } });
  },
};
