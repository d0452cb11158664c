/**
 * The process-level cleanup: on exit, SIGINT/SIGTERM/SIGHUP and Deno's uncaught-error events, every tracked
 * writer or output directory still open is aborted (its temporary files removed). Used by the writer's
 * sequence files (src/exdf/writer/files.ts), the spill files and the output directories (outdir.ts).
 */
import process from "node:process";

/** What the cleanup needs of a writer. */
export interface Abortable {
  abort(reason: string): void;
}

const liveWriters = new Set<Abortable>();
const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
const signalHandlers = new Map<string, () => void>();

function onExit(): void {
  for (const w of liveWriters) w.abort("process exit");
  liveWriters.clear();
}

// Deno does not emit process "exit" when an uncaught error ends the process; it dispatches these events
// on globalThis instead (Node has no globalThis.addEventListener).
const UNCAUGHT = ["error", "unhandledrejection"] as const;
const onUncaught = (e: Event) => {
  if (!e.defaultPrevented) onExit();
};
const eventTarget = globalThis as unknown as Partial<EventTarget>;

function installCleanup(): void {
  if (signalHandlers.size) return;
  process.on("exit", onExit);
  if (typeof eventTarget.addEventListener === "function") {
    for (const ev of UNCAUGHT) eventTarget.addEventListener(ev, onUncaught);
  }
  for (const sig of SIGNALS) {
    const handler = () => {
      for (const w of liveWriters) w.abort(sig);
      liveWriters.clear();
      uninstallCleanup();
      // Nobody else handles this signal: die of it, as without our handler.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    signalHandlers.set(sig, handler);
    process.on(sig, handler);
  }
}

function uninstallCleanup(): void {
  if (!signalHandlers.size) return;
  process.off("exit", onExit);
  if (typeof eventTarget.removeEventListener === "function") {
    for (const ev of UNCAUGHT) eventTarget.removeEventListener(ev, onUncaught);
  }
  for (const [sig, handler] of signalHandlers) process.off(sig, handler);
  signalHandlers.clear();
}

/** Register (live) or unregister a writer whose temporary files the process cleanup removes. */
export function track(w: Abortable, live: boolean): void {
  if (live) {
    liveWriters.add(w);
    installCleanup();
  } else {
    liveWriters.delete(w);
    if (!liveWriters.size) uninstallCleanup();
  }
}
