/**
 * Retries on UNAVAILABLE for the calls where a resend is safe: reads,
 * `trackEvents` (the server deduplicates events by id, and answers
 * UNAVAILABLE with reason `EVENTS_IN_FLIGHT` while an earlier attempt of the
 * same events is pending), `getCached`, `invalidate`, `stats`, `health`.
 * Upserts are sent once. The same policy as the Python client: exponential
 * backoff with full jitter, every attempt inside the call's one deadline.
 *
 * @module
 */
import { Code, ConnectError } from "@connectrpc/connect";

/** How UNAVAILABLE is retried. */
export interface RetryPolicy {
  /** Attempts in all, the first included (2..5). */
  readonly maxAttempts: number;
  /** Upper bound of the first wait (ms). */
  readonly initialBackoffMs: number;
  /** Cap of every wait (ms). */
  readonly maxBackoffMs: number;
  /** Growth of the bound per attempt. */
  readonly multiplier: number;
}

/** The default policy: 4 attempts, waits up to 50 ms, 100 ms, 200 ms (capped at 1 s). */
export const DEFAULT_RETRY: RetryPolicy = {
  maxAttempts: 4,
  initialBackoffMs: 50,
  maxBackoffMs: 1_000,
  multiplier: 2,
};

/** Injected by tests: a clock, a sleep, and the jitter drawn in `[0, bound]`. */
export interface RetryHooks {
  readonly now: () => number;
  readonly sleep: (ms: number) => Promise<void>;
  readonly jitter: (boundMs: number) => number;
}

const realHooks: RetryHooks = {
  now: () => Date.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  jitter: (bound) => Math.random() * bound,
};

/**
 * Runs `attempt(timeoutMs)` until it succeeds, fails with anything but
 * UNAVAILABLE, attempts run out, or the next backoff would pass the deadline.
 * `policy` undefined makes exactly one attempt.
 */
export async function withRetries<T>(
  attempt: (timeoutMs: number) => Promise<T>,
  budgetMs: number,
  policy: RetryPolicy | undefined,
  hooks: RetryHooks = realHooks,
): Promise<T> {
  const deadline = hooks.now() + budgetMs;
  const maxAttempts = policy?.maxAttempts ?? 1;
  for (let number = 1; ; number++) {
    try {
      return await attempt(Math.max(deadline - hooks.now(), 1));
    } catch (err) {
      if (policy === undefined || number >= maxAttempts || !isUnavailable(err)) throw err;
      const bound = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** (number - 1));
      const wait = hooks.jitter(bound);
      // A retry needs time for its own round trip, not just the wait.
      if (hooks.now() + wait >= deadline) throw err;
      await hooks.sleep(wait);
    }
  }
}

function isUnavailable(err: unknown): boolean {
  return err instanceof ConnectError && err.code === Code.Unavailable;
}
