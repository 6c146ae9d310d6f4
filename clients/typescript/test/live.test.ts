// Against a live server at MCPROUTER_TARGET (host:port). Without it every test
// here is reported as skipped, with the reason, and `npm test` still passes.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { after, before, describe, test } from "node:test";

import { assign } from "../src/assignment.js";
import { RouterClient } from "../src/client.js";
import { Code, RouterError } from "../src/errors.js";
import { ExperimentStatus } from "../src/gen/mcprouter/v1/experiment_pb.js";
import { DataType, ServeStatus } from "../src/gen/mcprouter/v1/serve_status_pb.js";

const target = process.env.MCPROUTER_TARGET ?? "";
const skip = target === "" ? "MCPROUTER_TARGET is not set: live-server tests skipped" : false;
const run = randomUUID().slice(0, 8);
const experimentId = `ts-exp-${run}`;
const variants = [
  { name: "control", weight: 50 },
  { name: "treatment", weight: 50 },
];

describe(`live server ${target || "(none)"}`, () => {
  let client: RouterClient;
  let salt = "";

  before(() => {
    if (!skip) client = new RouterClient({ target, timeoutMs: 10_000 });
  });
  after(() => client?.close());

  test("upsert an experiment: STORED, version 1, a server-made salt", { skip }, async () => {
    const { status, value } = await client.upsertExperiment({
      experimentId,
      name: "TypeScript client test",
      description: "made by clients/typescript/test/live.test.ts",
      status: ExperimentStatus.RUNNING,
      variants,
      version: 0n,
    });
    assert.equal(ServeStatus[status], "STORED");
    assert.equal(value.experimentId, experimentId);
    assert.equal(value.version, 1n);
    assert.ok(value.salt.length > 0, "the server makes a salt");
    salt = value.salt;
  });

  test("get the experiment: from the store, then CACHED", { skip }, async () => {
    const first = await client.getExperiment(experimentId);
    assert.ok([ServeStatus.FRESH, ServeStatus.CACHED].includes(first.status), ServeStatus[first.status]);
    assert.equal(first.cacheKey, `experiment:${experimentId}`);
    assert.equal(first.value.name, "TypeScript client test");
    assert.deepEqual(
      first.value.variants.map((v) => ({ name: v.name, weight: v.weight })),
      variants,
    );
    const second = await client.getExperiment(experimentId);
    assert.equal(ServeStatus[second.status], "CACHED");
  });

  test("the server's assignment matches the local algorithm", { skip }, async () => {
    for (const userId of ["alice", "bob", `u-${run}`]) {
      const { value } = await client.getAssignment(experimentId, userId);
      assert.deepEqual({ bucket: value.bucket, variant: value.variant }, assign(salt, userId, variants), userId);
    }
  });

  test("track an event: STORED; the same event again: DUPLICATE", { skip }, async () => {
    const variant = assign(salt, "alice", variants).variant;
    const event = {
      eventId: `ts-evt-${run}`,
      experimentId,
      userId: "alice",
      variant,
      eventType: "conversion",
      value: 9.5,
      timestamp: timestampFromDate(new Date()),
    };
    const first = await client.trackEvents([event]);
    assert.equal(first.value.stored, 1);
    assert.equal(ServeStatus[first.value.outcomes[0]!.status], "STORED");
    const again = await client.trackEvents([event]);
    assert.equal(again.value.duplicates, 1);
    assert.equal(ServeStatus[again.value.outcomes[0]!.status], "DUPLICATE");
  });

  test("GetCached sees the experiment; Invalidate removes it", { skip }, async () => {
    const key = `experiment:${experimentId}`;
    const cached = await client.getCached([key, `experiment:${experimentId}-missing`]);
    assert.equal(cached.entries[0]!.hit, true);
    assert.equal(cached.entries[0]!.dataType, DataType.EXPERIMENT);
    assert.equal(cached.entries[0]!.value.case, "experiment");
    assert.equal(cached.entries[1]!.hit, false);
    const removed = await client.invalidate({ experimentId });
    assert.ok(removed >= 1n, `removed ${removed}`);
    const after = await client.getCached([key]);
    assert.equal(after.entries[0]!.hit, false);
  });

  test("errors carry the gRPC code and the ErrorInfo reason", { skip }, async () => {
    await assert.rejects(client.getExperiment(`ts-missing-${run}`), (err: unknown) => {
      assert.ok(err instanceof RouterError);
      assert.equal(err.code, Code.NotFound);
      assert.equal(err.reason, "EXPERIMENT_NOT_FOUND");
      assert.equal(err.domain, "mcprouter.v1");
      return true;
    });
    await assert.rejects(client.getExperiment("not a valid id!"), (err: unknown) => {
      assert.ok(err instanceof RouterError);
      assert.equal(err.code, Code.InvalidArgument);
      assert.ok(err.fieldViolations.length >= 1, "a BadRequest field violation");
      assert.match(err.fieldViolations[0]!.field, /experiment_id/);
      return true;
    });
  });

  test("health, and errors that name the problem once, with the request id", { skip }, async () => {
    assert.equal(await client.health(), "SERVING");
    assert.equal(await client.health("postgres"), "SERVING");
    await assert.rejects(client.getExperiment(`ts-missing-${run}`, { headers: { "x-request-id": `ts-${run}` } }), (err: unknown) => {
      assert.ok(err instanceof RouterError);
      assert.equal(err.statusName, "NOT_FOUND");
      assert.equal(err.reason, "EXPERIMENT_NOT_FOUND");
      assert.equal(err.requestId, `ts-${run}`);
      assert.match(err.message, /^NOT_FOUND \(EXPERIMENT_NOT_FOUND\): .* \[request_id=ts-/);
      return true;
    });
  });

  test("what the server rejects is sent as given, not fixed up", { skip }, async () => {
    const notTruncated = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000 - 30 * 60_000);
    await assert.rejects(client.getEventMetrics(experimentId, "control", "click", notTruncated), (err: unknown) => {
      assert.ok(err instanceof RouterError);
      assert.equal(err.reason, "HOUR_NOT_TRUNCATED");
      assert.equal(err.fieldViolations[0]?.reason, "HOUR_NOT_TRUNCATED");
      return true;
    });
    const noTimestamp = { eventId: `ts-nots-${run}`, experimentId, userId: "u", variant: "control", eventType: "click" };
    await assert.rejects(client.trackEvents(noTimestamp), (err: unknown) => {
      assert.ok(err instanceof RouterError);
      assert.equal(err.reason, "MISSING_FIELD");
      assert.equal(err.fieldViolations[0]?.field, "track_events.events[0].timestamp");
      return true;
    });
  });

  test("Stats counts the operations and the duplicate", { skip }, async () => {
    const stats = await client.stats();
    assert.ok(stats.totalOperations >= 8n, `total_operations ${stats.totalOperations}`);
    assert.ok(stats.dedupHits >= 1n, `dedup_hits ${stats.dedupHits}`);
    assert.ok(stats.hitRate > 0 && stats.hitRate <= 1, `hit_rate ${stats.hitRate}`);
    const experiments = stats.dataTypes.find((d) => d.dataType === DataType.EXPERIMENT);
    assert.ok(experiments && experiments.hits >= 1n, "an experiment cache hit was counted");
  });
});
