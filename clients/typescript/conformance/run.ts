/**
 * The conformance scenario (clients/conformance/scenario.json) through the
 * TypeScript client; the twin of clients/conformance/run_python.py.
 *
 *   npx tsx conformance/run.ts HOST:PORT [scenario.json]
 *
 * Prints one line per step and `conformance: N passed, M failed`; exits 1 on
 * any failure.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRegistry, fromJson, toJson, create, type JsonValue, type Message } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";

import { RouterClient, RouterError, ServeStatus, type Served } from "../src/index.js";
import { file_mcprouter_v1_events } from "../src/gen/mcprouter/v1/events_pb.js";
import { file_mcprouter_v1_experiment } from "../src/gen/mcprouter/v1/experiment_pb.js";
import { file_mcprouter_v1_search } from "../src/gen/mcprouter/v1/search_pb.js";
import {
  file_mcprouter_v1_router_service,
  GetAnalyticsOperationSchema,
  GetAssignmentOperationSchema,
  GetCachedRequestSchema,
  GetEventMetricsOperationSchema,
  GetExperimentOperationSchema,
  GetUserProfileOperationSchema,
  InvalidateRequestSchema,
  InvalidateResponseSchema,
  SemanticSearchOperationSchema,
  TrackEventsOperationSchema,
  UpsertEmbeddingsOperationSchema,
  UpsertExperimentOperationSchema,
  UpsertUserProfileOperationSchema,
} from "../src/gen/mcprouter/v1/router_service_pb.js";

type Json = JsonValue;
type Outcome = Record<string, Json>;
interface Step {
  name: string;
  op: string;
  input: Record<string, Json>;
  expect: Record<string, Json>;
}

const registry = createRegistry(
  file_mcprouter_v1_events,
  file_mcprouter_v1_experiment,
  file_mcprouter_v1_search,
  file_mcprouter_v1_router_service,
);

function variables(): Record<string, string> {
  const hour = Math.floor(Date.now() / 3_600_000) * 3_600_000;
  const day = Math.floor(hour / 86_400_000) * 86_400_000;
  const iso = (ms: number) => new Date(ms).toISOString().replace(".000Z", "Z");
  return {
    run: `ts-${randomBytes(4).toString("hex")}`,
    hour: iso(hour),
    hour_minus_30m: iso(hour - 1_800_000),
    day: iso(day),
    day_key: iso(day).slice(0, 10).replaceAll("-", ""),
    day_plus_1h: iso(day + 3_600_000),
  };
}

function substitute(value: Json, names: Record<string, string>): Json {
  if (typeof value === "string") return value.replace(/\$\{(\w+)\}/g, (whole, name: string) => names[name] ?? whole);
  if (Array.isArray(value)) return value.map((v) => substitute(v, names));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, names)]));
  }
  return value;
}

/** Proto JSON: names as in the .proto, defaults emitted, 64-bit integers as strings. */
function asJson(message: Message): Json {
  const schema = registry.getMessage(message.$typeName);
  if (schema === undefined) throw new Error(`unknown message ${message.$typeName}`);
  return toJson(schema, message, { useProtoFieldName: true, alwaysEmitImplicit: true });
}

function served(answer: Served<Message>): Outcome {
  return { status: ServeStatus[answer.status] ?? String(answer.status), cache_key: answer.cacheKey, value: asJson(answer.value) };
}

function operations(client: RouterClient): Record<string, (input: Json) => Promise<Outcome>> {
  return {
    get_experiment: async (b) => served(await client.getExperiment(fromJson(GetExperimentOperationSchema, b).experimentId)),
    get_assignment: async (b) => {
      const op = fromJson(GetAssignmentOperationSchema, b);
      return served(await client.getAssignment(op.experimentId, op.userId));
    },
    get_user_profile: async (b) => served(await client.getUserProfile(fromJson(GetUserProfileOperationSchema, b).userId)),
    get_event_metrics: async (b) => {
      const op = fromJson(GetEventMetricsOperationSchema, b);
      return served(await client.getEventMetrics(op.experimentId, op.variant, op.metric, timestampDate(op.hour!)));
    },
    get_analytics: async (b) => {
      const op = fromJson(GetAnalyticsOperationSchema, b);
      return served(await client.getAnalytics(op.experimentId, timestampDate(op.day!)));
    },
    search: async (b) => {
      const op = fromJson(SemanticSearchOperationSchema, b);
      return served(await client.search(op.collection, op.embedding, op.k, { filter: op.filter }));
    },
    upsert_experiment: async (b) => served(await client.upsertExperiment(fromJson(UpsertExperimentOperationSchema, b).experiment!)),
    upsert_user_profile: async (b) =>
      served(await client.upsertUserProfile(fromJson(UpsertUserProfileOperationSchema, b).profile!)),
    track_events: async (b) => served(await client.trackEvents(fromJson(TrackEventsOperationSchema, b).events)),
    upsert_embeddings: async (b) => {
      const op = fromJson(UpsertEmbeddingsOperationSchema, b);
      return served(await client.upsertEmbeddings(op.collection, op.items));
    },
    get_cached: async (b) => ({ value: asJson(await client.getCached(fromJson(GetCachedRequestSchema, b).keys)) }),
    invalidate: async (b) => {
      const { target } = fromJson(InvalidateRequestSchema, b);
      let removed: bigint;
      if (target.case === "keys") removed = await client.invalidate({ keys: target.value.keys });
      else if (target.case === "pattern") removed = await client.invalidate({ pattern: target.value });
      else if (target.case === "experimentId") removed = await client.invalidate({ experimentId: target.value });
      else if (target.case === "userId") removed = await client.invalidate({ userId: target.value });
      else removed = await client.invalidate({ collection: target.value ?? "" });
      return { value: asJson(create(InvalidateResponseSchema, { removed })) };
    },
    stats: async () => ({ value: asJson(await client.stats()) }),
    health: async (b) => ({ value: await client.health(String((b as Record<string, Json>).service ?? "")) }),
  };
}

function failure(err: RouterError): Outcome {
  const first = err.fieldViolations[0];
  return { code: err.statusName, reason: err.reason, field: first?.field ?? "", field_reason: first?.reason ?? "" };
}

/** `expected` is a subset of `actual`: object keys recursively, arrays element-wise. */
function contains(actual: Json | undefined, expected: Json): boolean {
  if (Array.isArray(expected)) {
    return Array.isArray(actual) && actual.length >= expected.length && expected.every((e, i) => contains(actual[i], e));
  }
  if (expected !== null && typeof expected === "object") {
    if (actual === null || typeof actual !== "object" || Array.isArray(actual)) return false;
    return Object.entries(expected).every(([k, v]) => k in actual && contains(actual[k], v));
  }
  return actual === expected;
}

function check(outcome: Outcome, expect: Record<string, Json>): string | undefined {
  if ("code" in expect && !("code" in outcome)) return `expected ${String(expect.code)}, got success ${String(outcome.status ?? "")}`;
  if (!("code" in expect) && "code" in outcome) return `expected success, got ${String(outcome.code)} ${String(outcome.reason)}`;
  for (const [name, wanted] of Object.entries(expect)) {
    if (name === "value") {
      if (!contains(outcome.value, wanted)) return `value ${JSON.stringify(outcome.value)} lacks ${JSON.stringify(wanted)}`;
    } else if (outcome[name] !== wanted) {
      return `${name} ${JSON.stringify(outcome[name])}, expected ${JSON.stringify(wanted)}`;
    }
  }
  return undefined;
}

async function main(): Promise<number> {
  const target = process.argv[2];
  if (!target) throw new Error("usage: run.ts HOST:PORT [scenario.json]");
  const path = process.argv[3] ?? new URL("../../conformance/scenario.json", import.meta.url);
  const names = variables();
  const scenario = JSON.parse(readFileSync(path, "utf8")) as { steps: Json };
  const steps = substitute(scenario.steps, names) as unknown as Step[];
  const client = new RouterClient({ target, timeoutMs: 15_000 });
  const ops = operations(client);
  let passed = 0;
  let failed = 0;
  try {
    for (const [index, step] of steps.entries()) {
      let outcome: Outcome;
      try {
        const run = ops[step.op];
        if (run === undefined) throw new Error(`unknown op ${step.op}`);
        outcome = await run(step.input);
      } catch (err) {
        if (!(err instanceof RouterError)) throw err;
        outcome = failure(err);
      }
      const problem = check(outcome, step.expect);
      let shown = String(outcome.code ?? outcome.status ?? "ok");
      if (outcome.reason) shown += ` ${String(outcome.reason)}`;
      const number = String(index + 1).padStart(2);
      if (problem === undefined) {
        passed++;
        console.log(`ok   ${number} ${step.name}: ${shown}`);
      } else {
        failed++;
        console.log(`FAIL ${number} ${step.name}: ${problem}`);
      }
    }
  } finally {
    client.close();
  }
  console.log(`conformance (typescript, run ${names.run}): ${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

process.exitCode = await main();
