// Fault injection for crash drills and tests: BLUEGREEN_FAULT=pause-before:<step>:<unit> or
// pause-after:<step>:<unit> (unit may end in `*`) makes the process announce the point on stderr and
// wait there forever, so a drill can SIGKILL it at a known place. Unset in production.

function matches(pattern: string, value: string): boolean {
  return pattern.endsWith('*') ? value.startsWith(pattern.slice(0, -1)) : pattern === value;
}

/** Pauses forever when BLUEGREEN_FAULT names this point; a no-op otherwise. */
export async function faultPoint(when: 'before' | 'after', step: string, unit: string): Promise<void> {
  const fault = process.env.BLUEGREEN_FAULT;
  if (!fault || !fault.startsWith(`pause-${when}:`)) return;
  if (!matches(fault.slice(`pause-${when}:`.length), `${step}:${unit}`)) return;
  process.stderr.write(`fault: paused ${when} ${step}:${unit}\n`);
  await new Promise<never>(() => {});
}
