// Crash drills stop a run at a known journal unit so a test or an operator rehearsing recovery can
// SIGKILL it there. The stop is a hook the caller injects into the step context (pgroll's
// migrationHooks), never something the production path reads from the environment: a variable left
// set by mistake must not silently hang a production run. The CLI's hidden `--drill-pause` flag builds
// these hooks and says so loudly.

import { UsageError } from './errors.ts';

/** Hooks a run calls around each journal unit. */
export interface UnitHooks {
  /** Called after the unit is journalled as started, before its work. */
  beforeUnit?(step: string, unit: string): Promise<void>;
  /** Called after the unit is journalled as done. */
  afterUnit?(step: string, unit: string): Promise<void>;
}

/** Where a drill stops: `before:<step>:<unit>` or `after:<step>:<unit>`; the unit may end in `*`. */
export interface DrillPoint {
  /** Before the unit's work or after it is journalled done. */
  when: 'before' | 'after';
  /** `<step>:<unit>` pattern. */
  pattern: string;
}

/** Parses `before:<step>:<unit>` / `after:<step>:<unit>`; null when the text is not one. */
export function parseDrillPoint(text: string): DrillPoint | null {
  const match = /^(before|after):([^:]+:.+)$/.exec(text);
  return match ? { when: match[1] as DrillPoint['when'], pattern: match[2]! } : null;
}

function matches(pattern: string, value: string): boolean {
  return pattern.endsWith('*') ? value.startsWith(pattern.slice(0, -1)) : pattern === value;
}

/** Hooks that announce the drill point on stderr and then wait forever there (the drill kills the process). */
export function drillHooks(point: DrillPoint, write: (line: string) => void = (line) => void process.stderr.write(line)): UnitHooks {
  const stop = async (step: string, unit: string): Promise<void> => {
    if (!matches(point.pattern, `${step}:${unit}`)) return;
    write(`fault: paused ${point.when} ${step}:${unit} (crash drill: kill this process now)\n`);
    await new Promise<never>(() => {});
  };
  return point.when === 'before' ? { beforeUnit: stop } : { afterUnit: stop };
}

/** The warning printed when a run starts with a drill point: it will never finish on its own. */
export function drillWarning(point: DrillPoint): string {
  return `WARNING: --drill-pause is a crash-drill flag: this run stops ${point.when} ${point.pattern} and waits there forever. Never use it on a production run you want to finish.\n`;
}

/** The hooks for `--drill-pause <point>` (undefined without it); warns on stderr, refuses a malformed point (exit 1). */
export function drillHooksFromFlag(text: string | undefined): UnitHooks | undefined {
  if (text === undefined) return undefined;
  const point = parseDrillPoint(text);
  if (!point) throw new UsageError(`--drill-pause ${text} is not a drill point`, 'write before:<step>:<unit> or after:<step>:<unit>, e.g. after:snapshot:data:* (crash drills only)');
  process.stderr.write(drillWarning(point));
  return drillHooks(point);
}
