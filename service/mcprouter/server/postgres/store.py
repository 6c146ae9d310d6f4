"""PostgreSQL store: experiments, user profiles and sticky assignments.

Knows SQL and protobuf, nothing about caching or gRPC. Every public method
returns generated proto messages with their timestamps filled.

Writes use optimistic concurrency on ``version``: ``0`` creates (1 is the
first stored version), any other value updates only the row still at that
version and bumps it by one. Each write is one SQL statement, which
PostgreSQL runs atomically as its own transaction; an explicit BEGIN/COMMIT
would add two round trips and no safety. Only when that statement changed
nothing does a second read explain why (missing row, stale version, changed
salt), with a fresh snapshot so the reported ``current_version`` is the
latest one.

The experiment's salt is set on create (server-generated when empty) and is
immutable: an update may send it empty or unchanged; a different salt is
INVALID_ARGUMENT (reason ``SALT_IMMUTABLE``) rather than silently ignored,
since a caller that tries to re-salt expects users to move, and they would not.

Driver failures leave every method translated (``failures.translated``):
``Unavailable`` when PostgreSQL is down or timed out, ``Aborted`` on a
serialization conflict; the cache core decides whether to serve stale data.

The pool must decode ``jsonb`` to Python objects (``postgres_pool.create_pool``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import asyncpg
from asyncpg import Record

from mcprouter.server import errors
from mcprouter.server.budget import remaining
from mcprouter.server.entity_checks import check_experiment, check_user_profile
from mcprouter.server.postgres.assignment import assign
from mcprouter.server.postgres.failures import translated
from mcprouter.server.validation import Violations
from mcprouter.v1.experiment_pb2 import (
    Assignment,
    Experiment,
    ExperimentStatus,
    UserProfile,
    Variant,
)

# Stored as short lower-case words so the table reads well in psql.
_STATUS_TO_DB: dict[ExperimentStatus.ValueType, str] = {
    ExperimentStatus.EXPERIMENT_STATUS_DRAFT: "draft",
    ExperimentStatus.EXPERIMENT_STATUS_RUNNING: "running",
    ExperimentStatus.EXPERIMENT_STATUS_PAUSED: "paused",
    ExperimentStatus.EXPERIMENT_STATUS_COMPLETED: "completed",
}
_STATUS_FROM_DB = {text: status for status, text in _STATUS_TO_DB.items()}

_EXPERIMENT_COLUMNS = (
    "experiment_id, name, description, status, salt, variants, version, created_at, updated_at"
)
_PROFILE_COLUMNS = "user_id, attributes, version, created_at, updated_at"

# The server process that ran this task's last write (see ``write_settled``).
_WRITE_BACKEND: ContextVar[int | None] = ContextVar("mcprouter_write_backend", default=None)
# A backend still running a statement (or holding a transaction open).
_BACKEND_BUSY = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state <> 'idle'"
SETTLE_POLL_S = 0.02
SETTLE_QUERY_TIMEOUT_S = 5.0

_SELECT_EXPERIMENTS = f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE experiment_id = ANY($1)"
_INSERT_EXPERIMENT = f"""
INSERT INTO experiments (experiment_id, name, description, status, salt, variants, version)
VALUES ($1, $2, $3, $4, $5, $6, 1)
ON CONFLICT (experiment_id) DO NOTHING
RETURNING {_EXPERIMENT_COLUMNS}
"""
_UPDATE_EXPERIMENT = f"""
UPDATE experiments
SET name = $2, description = $3, status = $4, variants = $6,
    version = version + 1, updated_at = now()
WHERE experiment_id = $1 AND version = $7 AND ($5 = '' OR salt = $5)
RETURNING {_EXPERIMENT_COLUMNS}
"""
_SELECT_PROFILES = f"SELECT {_PROFILE_COLUMNS} FROM user_profiles WHERE user_id = ANY($1)"
_INSERT_PROFILE = f"""
INSERT INTO user_profiles (user_id, attributes, version) VALUES ($1, $2, 1)
ON CONFLICT (user_id) DO NOTHING
RETURNING {_PROFILE_COLUMNS}
"""
_UPDATE_PROFILE = f"""
UPDATE user_profiles SET attributes = $2, version = version + 1, updated_at = now()
WHERE user_id = $1 AND version = $3
RETURNING {_PROFILE_COLUMNS}
"""
# The experiment and the user's existing assignment in one round trip.
_READ_FOR_ASSIGNMENT = """
SELECT e.status, e.salt, e.variants, a.variant, a.bucket, a.assigned_at
FROM experiments e
LEFT JOIN assignments a ON a.experiment_id = e.experiment_id AND a.user_id = $2
WHERE e.experiment_id = $1
"""
# Re-checks RUNNING at insert time, so a pause between read and insert wins.
_INSERT_ASSIGNMENT = """
INSERT INTO assignments (experiment_id, user_id, variant, bucket)
SELECT experiment_id, $2, $3, $4 FROM experiments
WHERE experiment_id = $1 AND status = 'running'
ON CONFLICT (experiment_id, user_id) DO NOTHING
RETURNING variant, bucket, assigned_at
"""


def validate_experiment(exp: Experiment, field: str = "experiment") -> None:
    """Raise ``InvalidArgument`` unless ``exp`` may be stored."""
    v = Violations()
    check_experiment(v, exp, field)
    v.raise_if_any()


def validate_user_profile(profile: UserProfile, field: str = "profile") -> None:
    """Raise ``InvalidArgument`` unless ``profile`` may be stored."""
    v = Violations()
    check_user_profile(v, profile, field)
    v.raise_if_any()


def _experiment_from_row(row: Record) -> Experiment:
    exp = Experiment(
        experiment_id=row["experiment_id"],
        name=row["name"],
        description=row["description"],
        status=_STATUS_FROM_DB[row["status"]],
        variants=[Variant(name=v["name"], weight=v["weight"]) for v in row["variants"]],
        version=row["version"],
        salt=row["salt"],
    )
    exp.created_at.FromDatetime(row["created_at"])
    exp.updated_at.FromDatetime(row["updated_at"])
    return exp


def _profile_from_row(row: Record) -> UserProfile:
    profile = UserProfile(
        user_id=row["user_id"], attributes=row["attributes"], version=row["version"]
    )
    profile.created_at.FromDatetime(row["created_at"])
    profile.updated_at.FromDatetime(row["updated_at"])
    return profile


def _assignment_from_row(experiment_id: str, user_id: str, row: Record) -> Assignment:
    out = Assignment(
        experiment_id=experiment_id, user_id=user_id, variant=row["variant"], bucket=row["bucket"]
    )
    out.assigned_at.FromDatetime(row["assigned_at"])
    return out


def _version_conflict(kind: str, key: str, expected: int, current: int) -> errors.Aborted:
    return errors.Aborted(
        f"{kind} {key!r} is at version {current}, not {expected}: re-read and retry",
        reason="VERSION_CONFLICT",
        metadata={"id": key, "expected_version": str(expected), "current_version": str(current)},
    )


def _not_found(kind: str, key: str) -> errors.NotFound:
    return errors.NotFound(
        f"{kind} {key!r} does not exist; create it with version 0",
        reason=f"{kind.upper().replace(' ', '_')}_NOT_FOUND",
        metadata={"id": key},
    )


class PostgresStore:
    """Experiments, profiles and assignments in PostgreSQL, as proto messages.

    Borrows the pool (the caller opens and closes it).

    Attributes:
        queries: Store method calls that reached PostgreSQL (not SQL
            statements): a cache hit in front of the store leaves it unchanged.
    """

    def __init__(self, pool: asyncpg.Pool[Record]) -> None:
        self._pool = pool
        self.queries = 0

    async def get_experiment(self, experiment_id: str) -> Experiment | None:
        """The experiment, or ``None`` when it does not exist."""
        return (await self.get_experiments([experiment_id])).get(experiment_id)

    @translated
    async def get_experiments(self, ids: Sequence[str]) -> dict[str, Experiment]:
        """The experiments that exist among ``ids``, by id, in one query."""
        if not ids:
            return {}
        self.queries += 1
        rows = await self._pool.fetch(
            _SELECT_EXPERIMENTS, list(dict.fromkeys(ids)), timeout=remaining(None)
        )
        return {row["experiment_id"]: _experiment_from_row(row) for row in rows}

    @translated
    async def upsert_experiment(self, exp: Experiment) -> Experiment:
        """Create (``version == 0``) or update (``version`` = the one read) an experiment.

        Returns:
            The stored experiment with its new version, salt and timestamps.

        Raises:
            errors.InvalidArgument: Bad fields, or an update changing the salt.
            errors.Aborted: ``VERSION_CONFLICT``: created concurrently or stale version.
            errors.NotFound: An update of an experiment that does not exist.
        """
        validate_experiment(exp)
        key = exp.experiment_id
        status = _STATUS_TO_DB[exp.status]
        variants = [{"name": v.name, "weight": v.weight} for v in exp.variants]
        self.queries += 1
        async with self._pool.acquire(timeout=remaining(None)) as conn:
            _WRITE_BACKEND.set(conn.get_server_pid())
            if exp.version == 0:
                salt = exp.salt or secrets.token_hex(8)
                row = await conn.fetchrow(
                    _INSERT_EXPERIMENT,
                    key,
                    exp.name,
                    exp.description,
                    status,
                    salt,
                    variants,
                    timeout=remaining(None),
                )
                if row is None:
                    current = await conn.fetchval(
                        "SELECT version FROM experiments WHERE experiment_id = $1",
                        key,
                        timeout=remaining(None),
                    )
                    raise _version_conflict("experiment", key, 0, current or 0)
                return _experiment_from_row(row)
            args = (key, exp.name, exp.description, status, exp.salt, variants, exp.version)
            row = await conn.fetchrow(_UPDATE_EXPERIMENT, *args, timeout=remaining(None))
            if row is not None:
                return _experiment_from_row(row)
            found = await conn.fetchrow(
                "SELECT version, salt FROM experiments WHERE experiment_id = $1",
                key,
                timeout=remaining(None),
            )
        if found is None:
            raise _not_found("experiment", key)
        if exp.salt and exp.salt != found["salt"]:
            raise errors.InvalidArgument(
                [errors.FieldViolation("experiment.salt", "is immutable; send it empty")],
                reason="SALT_IMMUTABLE",
            )
        raise _version_conflict("experiment", key, exp.version, found["version"])

    async def write_settled(self) -> None:
        """Return once the last write of this task can no longer commit.

        A write whose outcome is unknown (its timeout fired, its connection
        broke) may still be running in PostgreSQL, and commit later: after
        the client gave up, a blocked statement goes on once its lock is
        free, and the cancel request may never arrive. An invalidation made
        before that commit can be undone by a read of the old row, so the
        writer invalidates again once this returns: when the server process
        that ran the write is idle (its statement ended) or gone.

        Raises:
            errors.Unavailable: PostgreSQL could not be asked; ask again.
        """
        backend = _WRITE_BACKEND.get()
        if backend is None:
            return
        # Polled: PostgreSQL has no notification for "this backend went idle".
        while await self._backend_busy(backend):  # noqa: ASYNC110
            await asyncio.sleep(SETTLE_POLL_S)

    @translated
    async def _backend_busy(self, backend: int) -> bool:
        busy = await self._pool.fetchval(_BACKEND_BUSY, backend, timeout=SETTLE_QUERY_TIMEOUT_S)
        return bool(busy)

    async def get_user_profile(self, user_id: str) -> UserProfile | None:
        """The profile, or ``None`` when it does not exist."""
        return (await self.get_user_profiles([user_id])).get(user_id)

    @translated
    async def get_user_profiles(self, ids: Sequence[str]) -> dict[str, UserProfile]:
        """The profiles that exist among ``ids``, by id, in one query."""
        if not ids:
            return {}
        self.queries += 1
        rows = await self._pool.fetch(
            _SELECT_PROFILES, list(dict.fromkeys(ids)), timeout=remaining(None)
        )
        return {row["user_id"]: _profile_from_row(row) for row in rows}

    @translated
    async def upsert_user_profile(self, profile: UserProfile) -> UserProfile:
        """Create or update a profile; same version rules as ``upsert_experiment``.

        Raises:
            errors.InvalidArgument: Bad fields.
            errors.Aborted: ``VERSION_CONFLICT``.
            errors.NotFound: An update of a profile that does not exist.
        """
        validate_user_profile(profile)
        key = profile.user_id
        attributes: Mapping[str, Any] = dict(profile.attributes)
        self.queries += 1
        async with self._pool.acquire(timeout=remaining(None)) as conn:
            _WRITE_BACKEND.set(conn.get_server_pid())
            if profile.version == 0:
                row = await conn.fetchrow(_INSERT_PROFILE, key, attributes, timeout=remaining(None))
            else:
                row = await conn.fetchrow(
                    _UPDATE_PROFILE, key, attributes, profile.version, timeout=remaining(None)
                )
            if row is not None:
                return _profile_from_row(row)
            current = await conn.fetchval(
                "SELECT version FROM user_profiles WHERE user_id = $1", key, timeout=remaining(None)
            )
        if current is None and profile.version != 0:
            raise _not_found("user profile", key)
        raise _version_conflict("user profile", key, profile.version, current or 0)

    @translated
    async def get_or_create_assignment(self, experiment_id: str, user_id: str) -> Assignment | None:
        """The user's sticky assignment, made on first call while the experiment runs.

        An existing assignment is returned as stored, even if the weights have
        changed since (that is what sticky means). One round trip when the
        assignment exists, two when it is made.

        Returns:
            The assignment, or ``None`` when the experiment does not exist.

        Raises:
            errors.FailedPrecondition: ``EXPERIMENT_NOT_RUNNING`` (no assignment yet).
            errors.Aborted: ``ASSIGNMENT_CONFLICT``: lost a race twice (not expected).
        """
        self.queries += 1
        async with self._pool.acquire(timeout=remaining(None)) as conn:
            # A second pass only follows a lost race: the concurrent winner's
            # row was not visible to the INSERT's snapshot, but a new
            # statement sees it.
            for _ in range(2):
                row = await conn.fetchrow(
                    _READ_FOR_ASSIGNMENT, experiment_id, user_id, timeout=remaining(None)
                )
                if row is None:
                    return None
                if row["variant"] is not None:
                    return _assignment_from_row(experiment_id, user_id, row)
                if row["status"] != "running":
                    raise errors.FailedPrecondition(
                        f"experiment {experiment_id!r} is {row['status']}, not running: "
                        "it makes no new assignments",
                        reason="EXPERIMENT_NOT_RUNNING",
                        metadata={"experiment_id": experiment_id, "status": row["status"]},
                    )
                variants = [(v["name"], v["weight"]) for v in row["variants"]]
                bucket, variant = assign(row["salt"], user_id, variants)
                inserted = await conn.fetchrow(
                    _INSERT_ASSIGNMENT,
                    experiment_id,
                    user_id,
                    variant,
                    bucket,
                    timeout=remaining(None),
                )
                if inserted is not None:
                    return _assignment_from_row(experiment_id, user_id, inserted)
        raise errors.Aborted(
            f"assignment of {user_id!r} in {experiment_id!r} kept conflicting; retry",
            reason="ASSIGNMENT_CONFLICT",
            metadata={"experiment_id": experiment_id, "user_id": user_id},
        )
