"""The PostgreSQL processor: experiments, user profiles and sticky assignments.

Reads go through the shared cache-aside core; writes go to PostgreSQL and then
invalidate, after the commit, every cache entry derived from what changed
(event-driven invalidation):

- an experiment upsert removes ``experiment:{id}`` and the experiment's
  ``metrics:{id}:*`` and ``analytics:{id}:*`` entries (its assignments are
  sticky, so their cached values stay true);
- a profile upsert removes ``user:{id}:profile``.

If Redis fails during that invalidation, the write is still committed and is
answered STORED (it *was* stored); the invalidation is retried in the
background with backoff, and until it succeeds reads may see the old value for
at most its freshness time. Failing the RPC instead would invite a retry that
then fails on the version check.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from mcprouter.server import keys
from mcprouter.server.cache import CacheAside, CachePolicy, Served
from mcprouter.server.errors import CacheUnavailable
from mcprouter.server.postgres.store import PostgresStore
from mcprouter.server.redis.processor import RedisProcessor
from mcprouter.server.retries import BackgroundRetries
from mcprouter.server.router import Handler, RouteResult
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.experiment_pb2 import Assignment, Experiment, UserProfile
from mcprouter.v1.serve_status_pb2 import ServeStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PostgresPolicies:
    """Cache policies of the three PostgreSQL data types."""

    experiment: CachePolicy
    assignment: CachePolicy
    user_profile: CachePolicy


class PostgresProcessor:
    """Serves the PostgreSQL-owned operations of RouteData."""

    def __init__(
        self,
        store: PostgresStore,
        cache: CacheAside,
        invalidator: RedisProcessor,
        policies: PostgresPolicies,
    ) -> None:
        self._store = store
        self._cache = cache
        self._invalidator = invalidator
        self._policies = policies
        self._retries = BackgroundRetries(retry_on=(CacheUnavailable,))

    def handlers(self) -> dict[str, Handler]:
        """The RouteData operations this processor serves."""
        return {
            "get_experiment": self.get_experiment,
            "get_assignment": self.get_assignment,
            "get_user_profile": self.get_user_profile,
            "upsert_experiment": self.upsert_experiment,
            "upsert_user_profile": self.upsert_user_profile,
        }

    async def get_experiment(self, op: rs.GetExperimentOperation) -> RouteResult:
        """Read an experiment through the cache."""
        served = await self._cache.get_or_load(
            keys.experiment_key(op.experiment_id),
            Experiment,
            lambda: self._store.get_experiment(op.experiment_id),
            self._policies.experiment,
        )
        return _result("experiment", served)

    async def get_assignment(self, op: rs.GetAssignmentOperation) -> RouteResult:
        """Read (or make, on first request) a user's sticky assignment."""
        served = await self._cache.get_or_load(
            keys.assignment_key(op.experiment_id, op.user_id),
            Assignment,
            lambda: self._store.get_or_create_assignment(op.experiment_id, op.user_id),
            self._policies.assignment,
        )
        return _result("assignment", served)

    async def get_user_profile(self, op: rs.GetUserProfileOperation) -> RouteResult:
        """Read a user profile through the cache."""
        served = await self._cache.get_or_load(
            keys.user_profile_key(op.user_id),
            UserProfile,
            lambda: self._store.get_user_profile(op.user_id),
            self._policies.user_profile,
        )
        return _result("user_profile", served)

    async def upsert_experiment(self, op: rs.UpsertExperimentOperation) -> RouteResult:
        """Write an experiment, then invalidate what was derived from it."""
        stored = await self._store.upsert_experiment(op.experiment)
        exp_id = stored.experiment_id
        key = keys.experiment_key(exp_id)

        async def invalidate() -> None:
            await self._cache.invalidate([key])
            await self._invalidator.invalidate_pattern(f"metrics:{exp_id}:*")
            await self._invalidator.invalidate_pattern(f"analytics:{exp_id}:*")

        await self._invalidate_or_retry(key, invalidate)
        return _stored("experiment", stored, key)

    async def upsert_user_profile(self, op: rs.UpsertUserProfileOperation) -> RouteResult:
        """Write a user profile, then invalidate its cache entry."""
        stored = await self._store.upsert_user_profile(op.profile)
        key = keys.user_profile_key(stored.user_id)

        async def invalidate() -> None:
            await self._cache.invalidate([key])

        await self._invalidate_or_retry(key, invalidate)
        return _stored("user_profile", stored, key)

    async def _invalidate_or_retry(
        self, key: str, invalidate: Callable[[], Awaitable[None]]
    ) -> None:
        try:
            await invalidate()
        except CacheUnavailable as exc:
            log.warning("invalidation of %s failed after commit, retrying: %s", key, exc)
            self._retries.start(
                f"invalidation of {key}", invalidate, gave_up="it expires with its TTL"
            )

    async def aclose(self) -> None:
        """Cancel pending invalidation retries (on shutdown)."""
        await self._retries.aclose()


def _result(
    field: str, served: Served[Experiment] | Served[Assignment] | Served[UserProfile]
) -> RouteResult:
    return RouteResult(
        status=served.status,
        result_field=field,
        value=served.value,
        cache_key=served.key,
        stored_at=served.stored_at,
    )


def _stored(field: str, value: Experiment | UserProfile, key: str) -> RouteResult:
    return RouteResult(
        status=ServeStatus.SERVE_STATUS_STORED,
        result_field=field,
        value=value,
        cache_key=key,
        stored_at=datetime.now(UTC),
    )
