// Types `env` and `exports` from `cloudflare:workers` in the workerd tests.

declare namespace Cloudflare {
  type TestWorkerEnv = import('./entry.ts').TestEnv;
  interface Env extends TestWorkerEnv {}
  interface GlobalProps {
    mainModule: typeof import('./entry.ts');
    durableNamespaces: 'RefreshCoalescer' | 'RouteFence';
  }
}
