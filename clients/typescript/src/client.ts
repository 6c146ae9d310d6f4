/**
 * A typed wrapper over the generated `mcprouter.v1.RouterService`, with the
 * surface of the Python client.
 *
 * One method per operation, a default deadline on every call, retries on
 * UNAVAILABLE where a resend is safe (see `retry.ts`), an `x-request-id` on
 * every call, an optional bearer token, and failed RPCs thrown as
 * {@link RouterError} (gRPC code, the server's `ErrorInfo` reason,
 * `BadRequest` field violations, the request id). Input is never fixed up:
 * an hour that is not truncated or an event without a timestamp goes to the
 * server as given and comes back INVALID_ARGUMENT (`HOUR_NOT_TRUNCATED`,
 * `MISSING_FIELD`), as with the Python client. The server speaks plain gRPC
 * over HTTP/2, so the transport is Connect's `createGrpcTransport`.
 *
 * ```ts
 * const client = new RouterClient({ target: "127.0.0.1:50051" });
 * try {
 *   const { status, value } = await client.getExperiment("exp-1");
 *   console.log(ServeStatus[status], value.name);
 * } finally {
 *   client.close();
 * }
 * ```
 *
 * @module
 */
import { randomBytes } from "node:crypto";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createClient, type CallOptions, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import type { Analytics, EventMetrics, EventSchema, TrackEventsResult } from "./gen/mcprouter/v1/events_pb.js";
import type {
  Assignment,
  Experiment,
  ExperimentSchema,
  UserProfile,
  UserProfileSchema,
} from "./gen/mcprouter/v1/experiment_pb.js";
import {
  RouteDataRequestSchema,
  RouterService,
  type GetCachedResponse,
  type InvalidateRequestSchema,
  type RouteDataResponse,
  type StatsResponse,
} from "./gen/mcprouter/v1/router_service_pb.js";
import type {
  EmbeddingItemSchema,
  MetadataFilterSchema,
  SearchResult,
  UpsertEmbeddingsResult,
} from "./gen/mcprouter/v1/search_pb.js";
import type { ServeStatus } from "./gen/mcprouter/v1/serve_status_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { REQUEST_ID_HEADER, translateError } from "./errors.js";
import { DEFAULT_RETRY, withRetries, type RetryPolicy } from "./retry.js";

/** Deadline of a call when the caller gives none (milliseconds). */
export const DEFAULT_TIMEOUT_MS = 5_000;

/** How to reach the server. */
export interface RouterClientOptions {
  /** `host:port` (plaintext) or a URL: `http://host:port`, `https://host:port` (TLS). */
  readonly target: string;
  /** Default deadline of every call in milliseconds (default {@link DEFAULT_TIMEOUT_MS}). */
  readonly timeoutMs?: number;
  /** Sent as `authorization: Bearer <token>` when the server requires it. */
  readonly token?: string;
  /** Retries on UNAVAILABLE of the calls a resend cannot harm; `null` turns them off. */
  readonly retry?: RetryPolicy | null;
  /** Headers sent with every call (before each call's own `headers`). */
  readonly headers?: Readonly<Record<string, string>>;
  /** Extra Connect interceptors, run after the token interceptor (they see every attempt). */
  readonly interceptors?: readonly Interceptor[];
}

/** Per-call options: a deadline, an `AbortSignal`, extra metadata. */
export interface RouterCallOptions {
  /** Deadline of this call in milliseconds, retries included; overrides the client's default. */
  readonly timeoutMs?: number;
  /** Cancels the call when aborted. */
  readonly signal?: AbortSignal;
  /** Metadata of this call only, e.g. `{ "x-request-id": "..." }` to choose the request id. */
  readonly headers?: Readonly<Record<string, string>>;
}

/** Options of `search`: the per-call options and an optional metadata filter. */
export interface SearchOptions extends RouterCallOptions {
  /** Restricts the items searched (typed conditions). */
  readonly filter?: MessageInitShape<typeof MetadataFilterSchema>;
}

/** One answer of `RouteData`: how it was served and the typed value. */
export interface Served<T> {
  /** CACHED, FRESH, STALE (reads) or STORED / DUPLICATE (writes). */
  readonly status: ServeStatus;
  /** The cache key of the answer (without the server's namespace); empty when not cached. */
  readonly cacheKey: string;
  /** When the value was read from its store, when the server says. */
  readonly storedAt: Date | undefined;
  /** The typed answer. */
  readonly value: T;
}

/** What `invalidate` removes: exactly one of these. */
export type InvalidateTarget =
  | { readonly keys: readonly string[] }
  | { readonly pattern: string }
  | { readonly experimentId: string }
  | { readonly userId: string }
  | { readonly collection: string };

/** An event to track; `timestamp` is required by the server (never filled in here). */
export type EventInit = MessageInitShape<typeof EventSchema>;

type RouteDataInit = MessageInitShape<typeof RouteDataRequestSchema>;
type ResultCase = NonNullable<RouteDataResponse["result"]["case"]>;
type ResultValue<C extends ResultCase> = Extract<RouteDataResponse["result"], { case: C }>["value"];

/** The current UTC hour, truncated (what `getEventMetrics` wants). */
export function currentHour(): Date {
  return new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000);
}

/** Midnight of the current UTC day (what `getAnalytics` wants). */
export function today(): Date {
  return new Date(Math.floor(Date.now() / 86_400_000) * 86_400_000);
}

/** The typed client; `close()` it when done (it holds one HTTP/2 connection). */
export class RouterClient {
  /** The generated Connect client, for anything the wrapper does not cover. */
  readonly raw: Client<typeof RouterService>;
  private readonly healthClient: Client<typeof Health>;
  private readonly sessionManager: Http2SessionManager;
  private readonly timeoutMs: number;
  private readonly retry: RetryPolicy | undefined;
  private readonly headers: Readonly<Record<string, string>>;

  constructor(options: RouterClientOptions) {
    const baseUrl = options.target.includes("://") ? options.target : `http://${options.target}`;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.retry = options.retry === null ? undefined : (options.retry ?? DEFAULT_RETRY);
    this.headers = { ...(options.headers ?? {}) };
    this.sessionManager = new Http2SessionManager(baseUrl);
    const interceptors: Interceptor[] = [];
    if (options.token !== undefined) {
      const header = `Bearer ${options.token}`;
      interceptors.push((next) => (request) => {
        request.header.set("authorization", header);
        return next(request);
      });
    }
    interceptors.push(...(options.interceptors ?? []));
    const transport = createGrpcTransport({ baseUrl, sessionManager: this.sessionManager, interceptors });
    this.raw = createClient(RouterService, transport);
    this.healthClient = createClient(Health, transport);
  }

  /** Closes the HTTP/2 connection; calls in flight fail. */
  close(): void {
    this.sessionManager.abort();
  }

  // -- RouteData: reads (resent on UNAVAILABLE) ---------------------------------------

  /** Reads an experiment (cached under `experiment:{id}`). */
  getExperiment(experimentId: string, options?: RouterCallOptions): Promise<Served<Experiment>> {
    return this.route({ operation: { case: "getExperiment", value: { experimentId } } }, "experiment", true, options);
  }

  /** The user's sticky variant, assigned on first request (the experiment must be RUNNING). */
  getAssignment(experimentId: string, userId: string, options?: RouterCallOptions): Promise<Served<Assignment>> {
    const value = { experimentId, userId };
    return this.route({ operation: { case: "getAssignment", value } }, "assignment", true, options);
  }

  /** Reads a user profile (cached under `user:{id}:profile`). */
  getUserProfile(userId: string, options?: RouterCallOptions): Promise<Served<UserProfile>> {
    return this.route({ operation: { case: "getUserProfile", value: { userId } } }, "userProfile", true, options);
  }

  /**
   * Count, sum and unique users of one metric of one variant for one UTC hour
   * (default: the current hour). An hour that is not truncated is refused by
   * the server (`HOUR_NOT_TRUNCATED`), not rounded here.
   */
  getEventMetrics(
    experimentId: string,
    variant: string,
    metric: string,
    hour: Date = currentHour(),
    options?: RouterCallOptions,
  ): Promise<Served<EventMetrics>> {
    const value = { experimentId, variant, metric, hour: timestampFromDate(hour) };
    return this.route({ operation: { case: "getEventMetrics", value } }, "eventMetrics", true, options);
  }

  /** Per-variant analytics of one experiment for one UTC day (default: today; midnight UTC). */
  getAnalytics(experimentId: string, day: Date = today(), options?: RouterCallOptions): Promise<Served<Analytics>> {
    const value = { experimentId, day: timestampFromDate(day) };
    return this.route({ operation: { case: "getAnalytics", value } }, "analytics", true, options);
  }

  /** The `k` nearest items of `collection` to `embedding` (as Python's `search(collection, embedding, k)`). */
  search(
    collection: string,
    embedding: readonly number[],
    k = 10,
    options?: SearchOptions,
  ): Promise<Served<SearchResult>> {
    const value = { collection, embedding: [...embedding], k, filter: options?.filter };
    return this.route({ operation: { case: "semanticSearch", value } }, "searchResult", true, options);
  }

  // -- RouteData: writes -----------------------------------------------------------------

  /** Creates (`version` 0) or updates (`version` = the one last read) an experiment; sent once. */
  upsertExperiment(
    experiment: MessageInitShape<typeof ExperimentSchema>,
    options?: RouterCallOptions,
  ): Promise<Served<Experiment>> {
    return this.route({ operation: { case: "upsertExperiment", value: { experiment } } }, "experiment", false, options);
  }

  /** Creates (`version` 0) or updates a user profile; sent once. */
  upsertUserProfile(
    profile: MessageInitShape<typeof UserProfileSchema>,
    options?: RouterCallOptions,
  ): Promise<Served<UserProfile>> {
    return this.route({ operation: { case: "upsertUserProfile", value: { profile } } }, "userProfile", false, options);
  }

  /**
   * Records one event or a batch (1..1000); each is answered STORED or
   * DUPLICATE. Resent on UNAVAILABLE (events are deduplicated by id). Every
   * event needs its `timestamp`: a missing one is refused (`MISSING_FIELD`).
   */
  trackEvents(events: EventInit | readonly EventInit[], options?: RouterCallOptions): Promise<Served<TrackEventsResult>> {
    const list = Array.isArray(events) ? [...(events as readonly EventInit[])] : [events as EventInit];
    return this.route({ operation: { case: "trackEvents", value: { events: list } } }, "trackEventsResult", true, options);
  }

  /** Writes vectors into a collection (created on first write); sent once. */
  upsertEmbeddings(
    collection: string,
    items: readonly MessageInitShape<typeof EmbeddingItemSchema>[],
    options?: RouterCallOptions,
  ): Promise<Served<UpsertEmbeddingsResult>> {
    const value = { collection, items: [...items] };
    return this.route({ operation: { case: "upsertEmbeddings", value } }, "upsertEmbeddingsResult", false, options);
  }

  // -- the cache itself and the server (resent on UNAVAILABLE) ------------------------------

  /** Reads keys straight from the cache (no store behind it); misses are reported. */
  getCached(keys: string | readonly string[], options?: RouterCallOptions): Promise<GetCachedResponse> {
    const list = typeof keys === "string" ? [keys] : [...keys];
    return this.call((o) => this.raw.getCached({ keys: list }, o), true, options);
  }

  /** Removes cache entries; answers how many keys were removed. */
  async invalidate(target: InvalidateTarget, options?: RouterCallOptions): Promise<bigint> {
    let request: MessageInitShape<typeof InvalidateRequestSchema>;
    if ("keys" in target) request = { target: { case: "keys", value: { keys: [...target.keys] } } };
    else if ("pattern" in target) request = { target: { case: "pattern", value: target.pattern } };
    else if ("experimentId" in target) request = { target: { case: "experimentId", value: target.experimentId } };
    else if ("userId" in target) request = { target: { case: "userId", value: target.userId } };
    else request = { target: { case: "collection", value: target.collection } };
    const response = await this.call((o) => this.raw.invalidate(request, o), true, options);
    return response.removed;
  }

  /** The server's cache counters and Redis usage. */
  stats(options?: RouterCallOptions): Promise<StatsResponse> {
    return this.call((o) => this.raw.stats({}, o), true, options);
  }

  /**
   * Standard gRPC health `Check`: `"SERVING"`, `"NOT_SERVING"`... `service` is
   * `""` (the server), a backend (`"redis"`, `"postgres"`) or
   * `"mcprouter.v1.RouterService"`; an unknown name is NOT_FOUND.
   */
  async health(service = "", options?: RouterCallOptions): Promise<string> {
    const response = await this.call((o) => this.healthClient.check({ service }, o), true, options);
    return HealthCheckResponse_ServingStatus[response.status] ?? String(response.status);
  }

  /** Sends any `RouteData` request once; the answer is returned as is. */
  routeData(request: RouteDataInit, options?: RouterCallOptions): Promise<RouteDataResponse> {
    return this.call((o) => this.raw.routeData(create(RouteDataRequestSchema, request), o), false, options);
  }

  private async route<C extends ResultCase>(
    request: RouteDataInit,
    expected: C,
    retryable: boolean,
    options: RouterCallOptions | undefined,
  ): Promise<Served<ResultValue<C>>> {
    const message = create(RouteDataRequestSchema, request);
    const response = await this.call((o) => this.raw.routeData(message, o), retryable, options);
    if (response.result.case !== expected) {
      throw new Error(`RouteData answered ${String(response.result.case)}, expected ${expected}`);
    }
    return {
      status: response.status,
      cacheKey: response.cacheKey,
      storedAt: response.storedAt ? timestampDate(response.storedAt) : undefined,
      value: response.result.value as ResultValue<C>,
    };
  }

  /** One call: its request id, attempts within one deadline, errors translated. */
  private async call<T>(
    send: (options: CallOptions) => Promise<T>,
    retryable: boolean,
    options: RouterCallOptions | undefined,
  ): Promise<T> {
    const headers: Record<string, string> = { ...this.headers, ...(options?.headers ?? {}) };
    const requestId = headers[REQUEST_ID_HEADER] ?? randomBytes(8).toString("hex");
    headers[REQUEST_ID_HEADER] = requestId;
    try {
      return await withRetries(
        (timeoutMs) => send({ timeoutMs, signal: options?.signal, headers }),
        options?.timeoutMs ?? this.timeoutMs,
        retryable ? this.retry : undefined,
      );
    } catch (err) {
      throw translateError(err, requestId);
    }
  }
}
