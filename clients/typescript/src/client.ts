/**
 * A small typed wrapper over the generated `mcprouter.v1.RouterService`.
 *
 * One method per operation, a default deadline on every call, an optional
 * bearer token, and failed RPCs thrown as {@link RouterError} (gRPC code plus
 * the server's `ErrorInfo` reason and `BadRequest` field violations). The
 * server speaks plain gRPC over HTTP/2, so the transport is Connect's
 * `createGrpcTransport` from `@connectrpc/connect-node`.
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
import { translateError } from "./errors.js";

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
  /** Extra Connect interceptors, run after the token interceptor. */
  readonly interceptors?: readonly Interceptor[];
}

/** Per-call options: a deadline and/or an `AbortSignal`. */
export interface RouterCallOptions {
  /** Deadline of this call in milliseconds; overrides the client's default. */
  readonly timeoutMs?: number;
  /** Cancels the call when aborted. */
  readonly signal?: AbortSignal;
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

type RouteDataInit = MessageInitShape<typeof RouteDataRequestSchema>;
type ResultCase = NonNullable<RouteDataResponse["result"]["case"]>;
type ResultValue<C extends ResultCase> = Extract<RouteDataResponse["result"], { case: C }>["value"];

/** The typed client; `close()` it when done (it holds one HTTP/2 connection). */
export class RouterClient {
  /** The generated Connect client, for anything the wrapper does not cover. */
  readonly raw: Client<typeof RouterService>;
  private readonly sessionManager: Http2SessionManager;
  private readonly timeoutMs: number;

  constructor(options: RouterClientOptions) {
    const baseUrl = options.target.includes("://") ? options.target : `http://${options.target}`;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
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
  }

  /** Closes the HTTP/2 connection; calls in flight fail. */
  close(): void {
    this.sessionManager.abort();
  }

  /** Reads an experiment (cached under `experiment:{id}`). */
  getExperiment(experimentId: string, options?: RouterCallOptions): Promise<Served<Experiment>> {
    return this.route({ operation: { case: "getExperiment", value: { experimentId } } }, "experiment", options);
  }

  /** Creates (`version` 0) or updates (`version` = the one last read) an experiment. */
  upsertExperiment(
    experiment: MessageInitShape<typeof ExperimentSchema>,
    options?: RouterCallOptions,
  ): Promise<Served<Experiment>> {
    return this.route({ operation: { case: "upsertExperiment", value: { experiment } } }, "experiment", options);
  }

  /** The user's sticky variant, assigned on first request (the experiment must be RUNNING). */
  getAssignment(experimentId: string, userId: string, options?: RouterCallOptions): Promise<Served<Assignment>> {
    return this.route(
      { operation: { case: "getAssignment", value: { experimentId, userId } } },
      "assignment",
      options,
    );
  }

  /** Reads a user profile (cached under `user:{id}:profile`). */
  getUserProfile(userId: string, options?: RouterCallOptions): Promise<Served<UserProfile>> {
    return this.route({ operation: { case: "getUserProfile", value: { userId } } }, "userProfile", options);
  }

  /** Creates (`version` 0) or updates a user profile. */
  upsertUserProfile(
    profile: MessageInitShape<typeof UserProfileSchema>,
    options?: RouterCallOptions,
  ): Promise<Served<UserProfile>> {
    return this.route({ operation: { case: "upsertUserProfile", value: { profile } } }, "userProfile", options);
  }

  /** Count, sum and unique users of one metric of one variant for one UTC hour. */
  getEventMetrics(
    query: { experimentId: string; variant: string; metric: string; hour: Date },
    options?: RouterCallOptions,
  ): Promise<Served<EventMetrics>> {
    const { hour, ...rest } = query;
    return this.route(
      { operation: { case: "getEventMetrics", value: { ...rest, hour: timestampFromDate(truncate(hour, 3_600_000)) } } },
      "eventMetrics",
      options,
    );
  }

  /** Per-variant analytics of one experiment for one UTC day. */
  getAnalytics(experimentId: string, day: Date, options?: RouterCallOptions): Promise<Served<Analytics>> {
    return this.route(
      {
        operation: {
          case: "getAnalytics",
          value: { experimentId, day: timestampFromDate(truncate(day, 86_400_000)) },
        },
      },
      "analytics",
      options,
    );
  }

  /**
   * Records events (1..1000); each is answered STORED or DUPLICATE. An event
   * without a `timestamp` is stamped with the current time here (the server
   * requires one).
   */
  trackEvents(
    events: readonly MessageInitShape<typeof EventSchema>[],
    options?: RouterCallOptions,
  ): Promise<Served<TrackEventsResult>> {
    const now = timestampFromDate(new Date());
    const stamped = events.map((event) => (event.timestamp ? event : { ...event, timestamp: now }));
    return this.route(
      { operation: { case: "trackEvents", value: { events: stamped } } },
      "trackEventsResult",
      options,
    );
  }

  /** The `k` nearest items of a collection to `embedding`. */
  search(
    query: {
      collection: string;
      embedding: readonly number[];
      k: number;
      filter?: MessageInitShape<typeof MetadataFilterSchema>;
    },
    options?: RouterCallOptions,
  ): Promise<Served<SearchResult>> {
    return this.route(
      { operation: { case: "semanticSearch", value: { ...query, embedding: [...query.embedding] } } },
      "searchResult",
      options,
    );
  }

  /** Writes vectors into a collection (created on first write). */
  upsertEmbeddings(
    collection: string,
    items: readonly MessageInitShape<typeof EmbeddingItemSchema>[],
    options?: RouterCallOptions,
  ): Promise<Served<UpsertEmbeddingsResult>> {
    return this.route(
      { operation: { case: "upsertEmbeddings", value: { collection, items: [...items] } } },
      "upsertEmbeddingsResult",
      options,
    );
  }

  /** Reads keys straight from the cache (no store behind it); misses are reported. */
  getCached(keys: readonly string[], options?: RouterCallOptions): Promise<GetCachedResponse> {
    return this.call(() => this.raw.getCached({ keys: [...keys] }, this.callOptions(options)));
  }

  /** Removes cache entries; answers how many keys were removed. */
  async invalidate(target: InvalidateTarget, options?: RouterCallOptions): Promise<bigint> {
    let request: MessageInitShape<typeof InvalidateRequestSchema>;
    if ("keys" in target) request = { target: { case: "keys", value: { keys: [...target.keys] } } };
    else if ("pattern" in target) request = { target: { case: "pattern", value: target.pattern } };
    else if ("experimentId" in target) request = { target: { case: "experimentId", value: target.experimentId } };
    else if ("userId" in target) request = { target: { case: "userId", value: target.userId } };
    else request = { target: { case: "collection", value: target.collection } };
    const response = await this.call(() => this.raw.invalidate(request, this.callOptions(options)));
    return response.removed;
  }

  /** The server's cache counters and Redis usage. */
  stats(options?: RouterCallOptions): Promise<StatsResponse> {
    return this.call(() => this.raw.stats({}, this.callOptions(options)));
  }

  /** Sends any `RouteData` request; the answer is returned as is. */
  routeData(request: RouteDataInit, options?: RouterCallOptions): Promise<RouteDataResponse> {
    return this.call(() => this.raw.routeData(create(RouteDataRequestSchema, request), this.callOptions(options)));
  }

  private async route<C extends ResultCase>(
    request: RouteDataInit,
    expected: C,
    options: RouterCallOptions | undefined,
  ): Promise<Served<ResultValue<C>>> {
    const response = await this.routeData(request, options);
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

  private callOptions(options: RouterCallOptions | undefined): CallOptions {
    return { timeoutMs: options?.timeoutMs ?? this.timeoutMs, signal: options?.signal };
  }

  private async call<T>(send: () => Promise<T>): Promise<T> {
    try {
      return await send();
    } catch (err) {
      throw translateError(err);
    }
  }
}

/** `date` rounded down to a multiple of `unitMs` since the epoch (UTC hour or day). */
function truncate(date: Date, unitMs: number): Date {
  return new Date(Math.floor(date.getTime() / unitMs) * unitMs);
}
