/**
 * mcp-router TypeScript/Node client: the typed wrapper, its errors and
 * retries, the assignment algorithm, and the generated `mcprouter.v1` messages.
 *
 * @module
 */
export * from "./client.js";
export * from "./errors.js";
export * from "./retry.js";
export * from "./assignment.js";
export * from "./gen/mcprouter/v1/events_pb.js";
export * from "./gen/mcprouter/v1/experiment_pb.js";
export * from "./gen/mcprouter/v1/router_service_pb.js";
export * from "./gen/mcprouter/v1/search_pb.js";
export * from "./gen/mcprouter/v1/serve_status_pb.js";
export * from "./gen/mcprouter/v1/cache_envelope_pb.js";
export { HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
