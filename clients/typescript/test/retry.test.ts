// The retry loop with a fake clock (offline).
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";

import { withRetries, type RetryHooks, type RetryPolicy } from "../src/retry.js";

const POLICY: RetryPolicy = { maxAttempts: 4, initialBackoffMs: 100, maxBackoffMs: 1_000, multiplier: 2 };

function script(codes: Code[]): { attempt: (ms: number) => Promise<string>; timeouts: number[]; waits: number[]; hooks: RetryHooks } {
  let now = 0;
  const timeouts: number[] = [];
  const waits: number[] = [];
  return {
    timeouts,
    waits,
    attempt: async (ms) => {
      timeouts.push(ms);
      const code = codes.shift();
      if (code !== undefined) throw new ConnectError("x", code);
      return "ok";
    },
    hooks: {
      now: () => now,
      sleep: async (ms) => {
        waits.push(ms);
        now += ms;
      },
      jitter: (bound) => bound,
    },
  };
}

test("UNAVAILABLE is retried with growing backoff inside one deadline", async () => {
  const s = script([Code.Unavailable, Code.Unavailable]);
  assert.equal(await withRetries(s.attempt, 5_000, POLICY, s.hooks), "ok");
  assert.deepEqual(s.waits, [100, 200]);
  assert.deepEqual(s.timeouts, [5_000, 4_900, 4_700]);
});

test("other codes, no policy, and a backoff past the deadline are final", async () => {
  const notFound = script([Code.NotFound]);
  await assert.rejects(withRetries(notFound.attempt, 5_000, POLICY, notFound.hooks));
  assert.equal(notFound.timeouts.length, 1);
  const once = script([Code.Unavailable]);
  await assert.rejects(withRetries(once.attempt, 5_000, undefined, once.hooks));
  assert.equal(once.timeouts.length, 1);
  const short = script([Code.Unavailable]);
  await assert.rejects(withRetries(short.attempt, 50, POLICY, short.hooks));
  assert.equal(short.timeouts.length, 1);
});
