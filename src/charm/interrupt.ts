/**
 * SIGTERM and SIGINT during an action (Juju sends SIGTERM on `juju cancel-task`
 * and when an action times out) abort the action's engine operation, which
 * cleans up and fails with an InterruptedError naming the signal.
 */
export interface ActionInterrupt {
  /** Aborted with the signal's name ("SIGTERM") as its reason. */
  signal: AbortSignal;
  /** Stops listening; call when the action ends. */
  release(): void;
}

export function listenForInterrupt(): ActionInterrupt {
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => controller.abort(signal);
  for (const name of ['SIGTERM', 'SIGINT'] as const) process.on(name, onSignal);
  return {
    signal: controller.signal,
    release: () => {
      for (const name of ['SIGTERM', 'SIGINT'] as const) process.off(name, onSignal);
    },
  };
}
