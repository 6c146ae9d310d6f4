"""The PostgreSQL processor: experiments, user profiles and sticky assignments.

Reads go through the shared cache-aside core; writes go to PostgreSQL and then
invalidate, after the commit, every cache entry derived from what changed
(event-driven invalidation):

- an experiment upsert removes ``experiment:{id}`` and the experiment's
  ``metrics:{id}:*`` and ``analytics:{id}:*`` entries (its assignments are
  sticky, so their cached values stay true);
- a profile upsert removes ``user:{id}:profile``.

A write and its invalidation run in a task the caller's cancellation cannot
reach (``writes.Writes``): an RPC cancelled or out of time after the commit
still invalidates. If Redis fails during that invalidation, the write is
still answered STORED (it *was* stored; failing the RPC would invite a retry
that then fails on the version check); the invalidation is retried until
Redis takes it, and meanwhile this instance reads those keys from PostgreSQL.

Assignments cache no "not found": a missing experiment is checked through
the cached ``experiment:{id}`` entry instead (negatively cached, and removed
by the upsert that creates it), so an assignment asked for before its
experiment existed is made as soon as it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mcprouter.server import keys
from mcprouter.server import operations as ops
from mcprouter.server.cache import CacheAside, CachePolicy, Served
from mcprouter.server.errors import NotFound
from mcprouter.server.postgres.store import PostgresStore
from mcprouter.server.router import Handlers, RouteResult
from mcprouter.server.writes import Writes
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.experiment_pb2 import Assignment, Experiment, UserProfile
from mcprouter.v1.serve_status_pb2 import ServeStatus


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
        policies: PostgresPolicies,
        *,
        writes: Writes | None = None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._policies = policies
        self._writes = writes or Writes()

    def handlers(self) -> Handlers:
        """The RouteData operations this processor serves."""
        return {
            ops.GET_EXPERIMENT: self.get_experiment,
            ops.GET_ASSIGNMENT: self.get_assignment,
            ops.GET_USER_PROFILE: self.get_user_profile,
            ops.UPSERT_EXPERIMENT: self.upsert_experiment,
            ops.UPSERT_USER_PROFILE: self.upsert_user_profile,
        }

    async def get_experiment(self, op: rs.GetExperimentOperation) -> RouteResult:
        """Read an experiment through the cache."""
        served = await self._cache.get_or_load(
            keys.experiment_key(op.experiment_id),
            Experiment,
            lambda: self._store.get_experiment(op.experiment_id),
            self._policies.experiment,
        )
        return _result(served)

    async def get_assignment(self, op: rs.GetAssignmentOperation) -> RouteResult:
        """Read (or make, on first request) a user's sticky assignment."""
        exp_id = op.experiment_id

        async def load() -> Assignment:
            made = await self._store.get_or_create_assignment(exp_id, op.user_id)
            if made is None:
                raise _experiment_missing(exp_id)
            return made

        async def load_if_the_experiment_exists() -> Assignment:
            try:
                await self.get_experiment(rs.GetExperimentOperation(experiment_id=exp_id))
            except NotFound as exc:
                raise _experiment_missing(exp_id) from exc
            return await load()

        policy = self._policies.assignment
        served = await self._cache.get_or_load(
            keys.assignment_key(exp_id, op.user_id),
            Assignment,
            load_if_the_experiment_exists if policy.enabled else load,
            policy,
        )
        return _result(served)

    async def get_user_profile(self, op: rs.GetUserProfileOperation) -> RouteResult:
        """Read a user profile through the cache."""
        served = await self._cache.get_or_load(
            keys.user_profile_key(op.user_id),
            UserProfile,
            lambda: self._store.get_user_profile(op.user_id),
            self._policies.user_profile,
        )
        return _result(served)

    async def upsert_experiment(self, op: rs.UpsertExperimentOperation) -> RouteResult:
        """Write an experiment, then invalidate what was derived from it."""
        exp_id = op.experiment.experiment_id
        key = keys.experiment_key(exp_id)
        stored = await self._writes.run(
            lambda: self._store.upsert_experiment(op.experiment),
            lambda: self._cache.after_write([key], keys.derived_patterns(exp_id)),
            settled=self._store.write_settled,
        )
        return _stored(stored, key)

    async def upsert_user_profile(self, op: rs.UpsertUserProfileOperation) -> RouteResult:
        """Write a user profile, then invalidate its cache entry."""
        key = keys.user_profile_key(op.profile.user_id)
        stored = await self._writes.run(
            lambda: self._store.upsert_user_profile(op.profile),
            lambda: self._cache.after_write([key]),
            settled=self._store.write_settled,
        )
        return _stored(stored, key)

    async def aclose(self) -> None:
        """Wait for writes still running (and their invalidations)."""
        await self._writes.aclose()


def _experiment_missing(experiment_id: str) -> NotFound:
    return NotFound(
        f"experiment {experiment_id!r} does not exist, so it assigns no one",
        reason="EXPERIMENT_NOT_FOUND",
        metadata={"experiment_id": experiment_id},
    )


def _result(served: Served[Experiment] | Served[Assignment] | Served[UserProfile]) -> RouteResult:
    return RouteResult(
        status=served.status,
        value=served.value,
        cache_key=served.key,
        stored_at=served.stored_at,
    )


def _stored(value: Experiment | UserProfile, key: str) -> RouteResult:
    return RouteResult(
        status=ServeStatus.SERVE_STATUS_STORED,
        value=value,
        cache_key=key,
        stored_at=datetime.now(UTC),
    )
