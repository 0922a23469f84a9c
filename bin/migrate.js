#!/usr/bin/env node
// Thin launcher: registers the TypeScript loader (tsx) and hands off to bin/migrate.ts.
import { register } from 'tsx/esm/api';

register();
await import('./migrate.ts');
