"""The ClickHouse processor: event ingestion, hourly metrics and daily analytics.

Ingestion (``track_events``), per request:

1. every event's experiment must exist and list the event's variant, else
   INVALID_ARGUMENT naming ``track_events.events[i].experiment_id``/``.variant``;
2. the request's event ids are claimed, all or nothing, by one Lua script
   (``dedup``): an id *done* (stored earlier), or repeated within the request,
   is DUPLICATE and written nowhere; an id *pending* (an earlier attempt is
   still storing it) makes the whole request UNAVAILABLE with reason
   ``EVENTS_IN_FLIGHT`` and claims nothing (resend it shortly); the other
   ids are claimed *pending* for ``DEDUP_PENDING_TTL_S``. If Redis is down
   nothing can be deduplicated, so the request fails UNAVAILABLE rather than
   risk counting events twice;
3. new events go to the group-commit batcher; the call returns once the
   ClickHouse insert carrying them succeeded, and their records are then
   marked *done* (kept ``DEDUP_TTL_S``). If the insert failed, the records
   this call claimed are released (so a retry is accepted) and the caller gets
   UNAVAILABLE: nothing is reported STORED unless it is in ClickHouse, and
   nothing is reported DUPLICATE unless it is in ClickHouse. Marking done and
   releasing are retried until Redis takes them; a Redis failure there does
   not change the answer;
4. then the real-time counters of the events' hours are updated (best
   effort: a Redis failure is logged, the events are stored), and late events
   (for an already closed hour) invalidate that hour's cached metrics and that
   day's cached analytics like any committed write (``CacheAside.after_write``:
   retried until Redis takes it, a last try at shutdown).

Steps 2-4 (``tracking.EventTracker``) run in a task the caller only awaits
(shielded), so a cancelled RPC cannot leave a record pending for an event
whose insert outcome nobody handled.

The answer's status is STORED when at least one event was stored and
DUPLICATE when all were duplicates; the per-event outcomes are the real answer.

Metrics (``get_event_metrics``), the hour rule:

* an hour is *open* until ``ingestion_lag_s`` (5 min) after its end: it is
  still being written, so it is served from the real-time counters (FRESH,
  not cached; unique users from a HyperLogLog are approximate). If Redis
  fails, the same figures come from ClickHouse directly;
* a *closed* hour never changes once ingestion lag has passed (a late event
  invalidates it, step 4), so it is read from ClickHouse through the cache
  with the ``closed_hour`` policy (days). Hours closed within the last
  ``recent_hours_s`` (a day) use the shorter ``event_metrics`` policy
  (15 min) instead: late events from offline clients cluster there, and if
  their invalidation ever fails the stale answer is bounded by minutes.

An unknown experiment is NOT_FOUND; a known one with no events answers zeros.
Analytics (``get_analytics``) are cached under ``analytics:{exp}:{YYYYMMDD}``
with the ``analytics`` policy; see ``analytics_report`` for their content.
Conversions are the events of type ``CONVERSION_EVENT_TYPE``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mcprouter.server import keys
from mcprouter.server import operations as ops
from mcprouter.server.cache import CacheAside, CachePolicy
from mcprouter.server.clickhouse.analytics_report import build_analytics
from mcprouter.server.clickhouse.store import ClickHouseStore
from mcprouter.server.clickhouse.tracking import EventTracker
from mcprouter.server.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from mcprouter.server.router import Handlers, RouteResult
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.events_pb2 import (
    Analytics,
    Event,
    EventMetrics,
    EventOutcome,
    TrackEventsResult,
)
from mcprouter.v1.experiment_pb2 import Experiment
from mcprouter.v1.serve_status_pb2 import ServeStatus

log = logging.getLogger(__name__)

ExperimentLookup = Callable[[str], Awaitable[Experiment | None]]

CONVERSION_EVENT_TYPE = "conversion"
STORED = ServeStatus.SERVE_STATUS_STORED
DUPLICATE = ServeStatus.SERVE_STATUS_DUPLICATE


@dataclass(frozen=True, slots=True)
class ClickHousePolicies:
    """Cache policies of the ClickHouse data types (see the hour rule above)."""

    event_metrics: CachePolicy
    analytics: CachePolicy
    closed_hour: CachePolicy


def experiment_lookup(
    cache: CacheAside, load: ExperimentLookup, policy: CachePolicy
) -> ExperimentLookup:
    """Look experiments up through the cache (``experiment:{id}``); None if missing."""

    async def lookup(experiment_id: str) -> Experiment | None:
        try:
            served = await cache.get_or_load(
                keys.experiment_key(experiment_id), Experiment, lambda: load(experiment_id), policy
            )
        except NotFound:
            return None
        return served.value

    return lookup


class ClickHouseProcessor:
    """Serves the ClickHouse-owned operations of RouteData."""

    def __init__(
        self,
        store: ClickHouseStore,
        tracker: EventTracker,
        cache: CacheAside,
        *,
        policies: ClickHousePolicies,
        experiments: ExperimentLookup,
        clock: Callable[[], float] = time.time,
        ingestion_lag_s: float = 300.0,
        recent_hours_s: float = 86_400.0,
    ) -> None:
        """Borrow the store and the cache core; own the tracker (``aclose`` closes it).

        Build one with ``wiring.clickhouse_processor``.

        Args:
            store: Where events are stored and aggregated.
            tracker: Deduplicates, stores and counts events (``tracking.py``).
            cache: The shared cache-aside core.
            policies: Cache policies of metrics and analytics.
            experiments: Looks an experiment up (None if it does not exist).
            clock: Epoch seconds.
            ingestion_lag_s: How long after its end an hour may still receive events.
            recent_hours_s: Closed hours younger than this use ``event_metrics``.
        """
        self._store = store
        self._tracker = tracker
        self._cache = cache
        self._policies = policies
        self._experiments = experiments
        self._clock = clock
        self._lag = timedelta(seconds=ingestion_lag_s)
        self._recent = timedelta(seconds=recent_hours_s)

    async def start(self, *, settle_wait_s: float = 10.0) -> None:
        """Before serving: settle the dedup records a killed run left pending.

        Only for an embedded engine: a copy stored twice on a shared
        ClickHouse server meets its twin in one table, where ``FINAL``
        collapses it; on an embedded one it would sit in another instance's
        database (``dedup``).
        """
        if self._store.embedded:
            await self._tracker.settle_recent(self._store.recent_event_ids, wait_s=settle_wait_s)

    def handlers(self) -> Handlers:
        """The RouteData operations this processor serves."""
        return {
            ops.TRACK_EVENTS: self.track_events,
            ops.GET_EVENT_METRICS: self.get_event_metrics,
            ops.GET_ANALYTICS: self.get_analytics,
        }

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def track_events(self, op: rs.TrackEventsOperation) -> RouteResult:
        """Deduplicate, store and count a batch of (validated) events."""
        events = list(op.events)
        await self._check_membership(events)
        task = self._tracker.start(events)
        # shield: a cancelled RPC must not stop the claim/insert/release sequence.
        is_new = await asyncio.shield(task)
        result = TrackEventsResult()
        for event, new in zip(events, is_new, strict=True):
            result.outcomes.append(
                EventOutcome(event_id=event.event_id, status=STORED if new else DUPLICATE)
            )
        result.stored = sum(is_new)
        result.duplicates = len(events) - result.stored
        return RouteResult(
            status=STORED if result.stored else DUPLICATE,
            value=result,
            stored_at=self._now(),
        )

    async def _check_membership(self, events: Sequence[Event]) -> None:
        ids = list(dict.fromkeys(e.experiment_id for e in events))
        found = await asyncio.gather(*(self._experiments(i) for i in ids))
        variants = {
            i: {v.name for v in e.variants}
            for i, e in zip(ids, found, strict=True)
            if e is not None
        }
        problems: list[FieldViolation] = []
        for index, event in enumerate(events):
            at = f"track_events.events[{index}]"
            names = variants.get(event.experiment_id)
            if names is None:
                problems.append(
                    FieldViolation(
                        f"{at}.experiment_id", f"experiment {event.experiment_id!r} does not exist"
                    )
                )
            elif event.variant not in names:
                problems.append(
                    FieldViolation(
                        f"{at}.variant",
                        f"is not a variant of experiment {event.experiment_id!r} "
                        f"(one of {', '.join(sorted(names))})",
                    )
                )
        if problems:
            raise InvalidArgument(problems, reason="UNKNOWN_EXPERIMENT_OR_VARIANT")

    async def get_event_metrics(self, op: rs.GetEventMetricsOperation) -> RouteResult:
        """One metric of one variant for one UTC hour (see the hour rule)."""
        await self._require_experiment(op.experiment_id)
        hour = op.hour.ToDatetime(tzinfo=UTC)
        key = keys.event_metrics_key(op.experiment_id, op.variant, op.metric, hour)
        now = self._now()
        hour_end = hour + timedelta(hours=1)
        if now < hour_end + self._lag:
            metrics = await self._open_hour(op, hour)
            return RouteResult(ServeStatus.SERVE_STATUS_FRESH, metrics, key, stored_at=now)

        async def load() -> EventMetrics:
            metrics = await self._store.hour_metrics(op.experiment_id, op.variant, op.metric, hour)
            metrics.hour_closed = True
            return metrics

        recent = now < hour_end + self._recent
        policy = self._policies.event_metrics if recent else self._policies.closed_hour
        served = await self._cache.get_or_load(key, EventMetrics, load, policy)
        return RouteResult(served.status, served.value, key, served.stored_at)

    async def _open_hour(self, op: rs.GetEventMetricsOperation, hour: datetime) -> EventMetrics:
        figures = await self._tracker.counters.read(op.experiment_id, op.variant, op.metric, hour)
        if figures is None:  # Redis down (the guard logged it): the same figures, exact
            return await self._store.hour_metrics(op.experiment_id, op.variant, op.metric, hour)
        metrics = EventMetrics(
            experiment_id=op.experiment_id,
            variant=op.variant,
            metric=op.metric,
            count=figures.count,
            sum=figures.sum,
            unique_users=figures.unique_users,
        )
        metrics.hour.FromDatetime(hour)
        return metrics

    async def get_analytics(self, op: rs.GetAnalyticsOperation) -> RouteResult:
        """Per-variant analytics of one UTC day, against the control variant."""
        experiment = await self._require_experiment(op.experiment_id)
        day = op.day.ToDatetime(tzinfo=UTC)
        key = keys.analytics_key(op.experiment_id, day)
        variants = [v.name for v in experiment.variants]

        async def load() -> Analytics:
            counts = await self._store.day_counts(op.experiment_id, day, CONVERSION_EVENT_TYPE)
            return build_analytics(op.experiment_id, day, variants, counts)

        served = await self._cache.get_or_load(key, Analytics, load, self._policies.analytics)
        return RouteResult(served.status, served.value, key, served.stored_at)

    async def _require_experiment(self, experiment_id: str) -> Experiment:
        experiment = await self._experiments(experiment_id)
        if experiment is None:
            raise NotFound(
                f"experiment {experiment_id!r} does not exist",
                reason="EXPERIMENT_NOT_FOUND",
                metadata={"experiment_id": experiment_id},
            )
        return experiment

    async def aclose(self) -> None:
        """Let in-flight ingestion finish, then give pending dedup-record writes a last try.

        Close this before the batcher (``EventBatcher.aclose``) and the store.
        """
        await self._tracker.aclose()
