// Quickstart: create an experiment, assign a user (and check the assignment
// locally), track a conversion twice, read Stats.
//
//   MCPROUTER_TARGET=127.0.0.1:50051 npx tsx examples/quickstart.ts
import { timestampFromDate } from "@bufbuild/protobuf/wkt";

import {
  assign,
  Code,
  ExperimentStatus,
  RouterClient,
  RouterError,
  ServeStatus,
} from "../src/index.js";

const client = new RouterClient({ target: process.env.MCPROUTER_TARGET ?? "127.0.0.1:50051" });
const experimentId = "checkout-button";

try {
  // Create it on first run (version 0); later runs read the stored one.
  let experiment;
  try {
    ({ value: experiment } = await client.getExperiment(experimentId));
  } catch (err) {
    if (!(err instanceof RouterError && err.code === Code.NotFound)) throw err;
    ({ value: experiment } = await client.upsertExperiment({
      experimentId,
      name: "Checkout button colour",
      status: ExperimentStatus.RUNNING,
      variants: [
        { name: "control", weight: 50 },
        { name: "green", weight: 50 },
      ],
      version: 0n,
    }));
  }
  const served = await client.getExperiment(experimentId);
  console.log(`experiment ${experimentId}: ${ServeStatus[served.status]} (cache key ${served.cacheKey})`);

  const { value: assignment } = await client.getAssignment(experimentId, "alice");
  const local = assign(experiment.salt, "alice", experiment.variants);
  console.log(`alice -> ${assignment.variant} (bucket ${assignment.bucket}); computed locally: ${local.variant}`);

  const event = {
    eventId: `quickstart-${Date.now()}`,
    experimentId,
    userId: "alice",
    variant: assignment.variant,
    eventType: "conversion",
    value: 42,
    timestamp: timestampFromDate(new Date()),
  };
  for (let i = 0; i < 2; i++) {
    const { value } = await client.trackEvents([event]);
    console.log(`track ${event.eventId}: ${ServeStatus[value.outcomes[0]!.status]}`);
  }

  const stats = await client.stats();
  console.log(`hit rate ${(stats.hitRate * 100).toFixed(1)}%, operations ${stats.totalOperations}, dedup hits ${stats.dedupHits}`);
} catch (err) {
  if (err instanceof RouterError) {
    console.error(`${err.codeName} ${err.reason}: ${err.message}`, err.metadata, err.fieldViolations);
    process.exitCode = 1;
  } else {
    throw err;
  }
} finally {
  client.close();
}
