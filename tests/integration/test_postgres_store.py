"""PostgresStore and migrations against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from mcprouter.server import errors
from mcprouter.server.postgres.assignment import assign
from mcprouter.server.postgres.migrations import (
    apply_migrations,
    available_migrations,
    pending_migrations,
)
from mcprouter.server.postgres.pool import create_pool
from mcprouter.server.postgres.store import PostgresStore
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, UserProfile, Variant
from tests import backends

RUNNING = ExperimentStatus.EXPERIMENT_STATUS_RUNNING
DRAFT = ExperimentStatus.EXPERIMENT_STATUS_DRAFT
PAUSED = ExperimentStatus.EXPERIMENT_STATUS_PAUSED


@pytest.fixture(scope="module")
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(postgres_dsn, min_size=1, max_size=8)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def store(pool: asyncpg.Pool) -> PostgresStore:
    return PostgresStore(pool)


@pytest.fixture
async def fresh_dsn(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """An empty database of its own, for tests that watch migrations apply."""
    dsn = await backends.create_database(postgres_admin_dsn)
    try:
        yield dsn
    finally:
        await backends.drop_database(postgres_admin_dsn, dsn)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def experiment(
    experiment_id: str,
    *,
    status: ExperimentStatus.ValueType = RUNNING,
    weights: tuple[int, ...] = (50, 50),
    version: int = 0,
    salt: str = "",
) -> Experiment:
    names = ["control", "treatment", "third", "fourth"]
    return Experiment(
        experiment_id=experiment_id,
        name="Checkout button",
        description="Does a green button sell more?",
        status=status,
        variants=[Variant(name=names[i], weight=w) for i, w in enumerate(weights)],
        version=version,
        salt=salt,
    )


# --- migrations -------------------------------------------------------------


async def test_migrations_apply_once(fresh_dsn: str) -> None:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        assert [m.version for m in await pending_migrations(conn)] == [
            m.version for m in available_migrations()
        ]
        first = await apply_migrations(conn)
        assert first == [m.version for m in available_migrations()]
        assert first[0] == "0001_experiments_users_assignments"
        assert await apply_migrations(conn) == []
        assert await pending_migrations(conn) == []
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ANY($1)",
            ["experiments", "user_profiles", "assignments", "schema_migrations"],
        )
        assert tables == 4
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_file_once(fresh_dsn: str) -> None:
    conns = [await asyncpg.connect(fresh_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        applied = [version for result in results for version in result]
        assert sorted(applied) == sorted(m.version for m in available_migrations())
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(available_migrations())
    finally:
        for conn in conns:
            await conn.close()


# --- experiments ------------------------------------------------------------


async def test_experiment_create_read_update(store: PostgresStore) -> None:
    key = uid("exp")
    created = await store.upsert_experiment(experiment(key))
    assert created.version == 1
    assert len(created.salt) == 16  # secrets.token_hex(8)
    assert created.created_at.seconds > 0
    assert created.updated_at == created.created_at

    read = await store.get_experiment(key)
    assert read == created

    change = experiment(key, status=PAUSED, weights=(10, 90), version=1)
    change.name = "Renamed"
    updated = await store.upsert_experiment(change)
    assert updated.version == 2
    assert updated.name == "Renamed"
    assert updated.status == PAUSED
    assert [(v.name, v.weight) for v in updated.variants] == [("control", 10), ("treatment", 90)]
    assert updated.salt == created.salt  # empty salt on update keeps the stored one
    assert updated.created_at == created.created_at
    assert updated.updated_at.ToDatetime() >= created.updated_at.ToDatetime()
    assert await store.get_experiment(key) == updated


async def test_given_salt_is_kept_and_immutable(store: PostgresStore) -> None:
    key = uid("exp")
    created = await store.upsert_experiment(experiment(key, salt="my-salt"))
    assert created.salt == "my-salt"
    same = await store.upsert_experiment(experiment(key, version=1, salt="my-salt"))
    assert same.version == 2
    with pytest.raises(errors.InvalidArgument) as info:
        await store.upsert_experiment(experiment(key, version=2, salt="other-salt"))
    assert info.value.reason == "SALT_IMMUTABLE"
    stored = await store.get_experiment(key)
    assert stored is not None and stored.version == 2


async def test_stale_version_is_aborted(store: PostgresStore) -> None:
    key = uid("exp")
    await store.upsert_experiment(experiment(key))
    await store.upsert_experiment(experiment(key, version=1))
    with pytest.raises(errors.Aborted) as info:
        await store.upsert_experiment(experiment(key, version=1, weights=(1, 1)))
    assert info.value.reason == "VERSION_CONFLICT"
    assert info.value.metadata["current_version"] == "2"
    assert info.value.metadata["expected_version"] == "1"
    stored = await store.get_experiment(key)
    assert stored is not None and [v.weight for v in stored.variants] == [50, 50]


async def test_create_of_existing_is_aborted(store: PostgresStore) -> None:
    key = uid("exp")
    await store.upsert_experiment(experiment(key))
    with pytest.raises(errors.Aborted) as info:
        await store.upsert_experiment(experiment(key))
    assert info.value.reason == "VERSION_CONFLICT"
    assert info.value.metadata["current_version"] == "1"


async def test_update_of_missing_is_not_found(store: PostgresStore) -> None:
    with pytest.raises(errors.NotFound):
        await store.upsert_experiment(experiment(uid("exp"), version=3))


async def test_concurrent_updates_of_one_version_one_wins(store: PostgresStore) -> None:
    key = uid("exp")
    await store.upsert_experiment(experiment(key))
    results = await asyncio.gather(
        *(store.upsert_experiment(experiment(key, version=1)) for _ in range(10)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Experiment) for r in results) == 1
    assert sum(isinstance(r, errors.Aborted) for r in results) == 9


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (experiment("ok", status=ExperimentStatus.EXPERIMENT_STATUS_UNSPECIFIED), "status"),
        (experiment("ok", weights=(0, 1)), "variants[0].weight"),
        (experiment("ok", weights=(1, 10001)), "variants[1].weight"),
        (Experiment(experiment_id="ok", status=RUNNING), "variants"),
        (experiment("bad:id"), "experiment_id"),
        (experiment("ok", version=-1), "version"),
    ],
)
async def test_invalid_experiment_is_rejected_before_a_query(
    store: PostgresStore, bad: Experiment, field: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        await store.upsert_experiment(bad)
    assert any(v.field == f"experiment.{field}" for v in info.value.violations)
    assert store.queries == 0


async def test_duplicate_variant_names_are_rejected(store: PostgresStore) -> None:
    bad = experiment("ok")
    bad.variants[1].name = "control"
    with pytest.raises(errors.InvalidArgument):
        await store.upsert_experiment(bad)


async def test_get_experiments_batch(store: PostgresStore) -> None:
    a, b, missing = uid("exp"), uid("exp"), uid("missing")
    await store.upsert_experiment(experiment(a))
    await store.upsert_experiment(experiment(b, status=DRAFT))
    store.queries = 0
    found = await store.get_experiments([a, b, missing, a])
    assert set(found) == {a, b}
    assert found[b].status == DRAFT
    assert store.queries == 1
    assert await store.get_experiment(missing) is None


# --- user profiles ----------------------------------------------------------


async def test_profile_round_trip(store: PostgresStore) -> None:
    user = uid("user")
    created = await store.upsert_user_profile(
        UserProfile(user_id=user, attributes={"country": "DE", "plan": "pro", "empty": ""})
    )
    assert created.version == 1
    assert dict(created.attributes) == {"country": "DE", "plan": "pro", "empty": ""}
    assert created.created_at.seconds > 0
    assert await store.get_user_profile(user) == created

    updated = await store.upsert_user_profile(
        UserProfile(user_id=user, attributes={"country": "FR"}, version=1)
    )
    assert updated.version == 2
    assert dict(updated.attributes) == {"country": "FR"}

    with pytest.raises(errors.Aborted) as info:
        await store.upsert_user_profile(UserProfile(user_id=user, version=1))
    assert info.value.metadata["current_version"] == "2"
    with pytest.raises(errors.Aborted):
        await store.upsert_user_profile(UserProfile(user_id=user))
    with pytest.raises(errors.NotFound):
        await store.upsert_user_profile(UserProfile(user_id=uid("user"), version=1))

    other = uid("user")
    assert set(await store.get_user_profiles([user, other])) == {user}
    assert await store.get_user_profile(other) is None


# --- assignments ------------------------------------------------------------


async def test_assignment_is_deterministic_and_stored(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    key = uid("exp")
    exp = await store.upsert_experiment(experiment(key, weights=(1, 2, 3)))
    variants = [(v.name, v.weight) for v in exp.variants]
    for i in range(20):
        user = f"user-{i}"
        got = await store.get_or_create_assignment(key, user)
        assert got is not None
        assert (got.bucket, got.variant) == assign(exp.salt, user, variants)
        assert got.experiment_id == key and got.user_id == user
        assert got.assigned_at.seconds > 0
        again = await store.get_or_create_assignment(key, user)
        assert again == got
    rows = await pool.fetchval("SELECT count(*) FROM assignments WHERE experiment_id = $1", key)
    assert rows == 20


async def test_assignment_is_sticky_across_a_weight_change(store: PostgresStore) -> None:
    key = uid("exp")
    exp = await store.upsert_experiment(experiment(key, weights=(50, 50)))
    new_weights = [("control", 1), ("treatment", 9999)]
    # A user now in control whose bucket moves to treatment under the new weights.
    user = next(
        u
        for u in (f"user-{i}" for i in range(1000))
        if assign(exp.salt, u, [("control", 50), ("treatment", 50)])[1] == "control"
        and assign(exp.salt, u, new_weights)[1] == "treatment"
    )
    first = await store.get_or_create_assignment(key, user)
    assert first is not None and first.variant == "control"

    await store.upsert_experiment(experiment(key, weights=(1, 9999), version=1))
    after = await store.get_or_create_assignment(key, user)
    assert after == first

    # A user first seen after the change gets the new weights.
    newcomer = uid("user")
    fresh = await store.get_or_create_assignment(key, newcomer)
    assert fresh is not None
    assert fresh.variant == assign(exp.salt, newcomer, new_weights)[1]


@pytest.mark.parametrize("status", [DRAFT, PAUSED, ExperimentStatus.EXPERIMENT_STATUS_COMPLETED])
async def test_non_running_experiment_makes_no_assignment(
    store: PostgresStore, status: ExperimentStatus.ValueType
) -> None:
    key = uid("exp")
    await store.upsert_experiment(experiment(key, status=status))
    with pytest.raises(errors.FailedPrecondition) as info:
        await store.get_or_create_assignment(key, "user-1")
    assert info.value.reason == "EXPERIMENT_NOT_RUNNING"
    name = ExperimentStatus.Name(status).removeprefix("EXPERIMENT_STATUS_").lower()
    assert name in info.value.message
    assert info.value.metadata["status"] == name


async def test_paused_experiment_keeps_existing_assignments(store: PostgresStore) -> None:
    key = uid("exp")
    await store.upsert_experiment(experiment(key))
    made = await store.get_or_create_assignment(key, "user-1")
    await store.upsert_experiment(experiment(key, status=PAUSED, version=1))
    assert await store.get_or_create_assignment(key, "user-1") == made
    with pytest.raises(errors.FailedPrecondition):
        await store.get_or_create_assignment(key, "user-2")


async def test_missing_experiment_has_no_assignment(store: PostgresStore) -> None:
    assert await store.get_or_create_assignment(uid("missing"), "user-1") is None


async def test_concurrent_first_assignments_agree(store: PostgresStore, pool: asyncpg.Pool) -> None:
    key = uid("exp")
    await store.upsert_experiment(experiment(key, weights=(1, 1, 1)))
    results = await asyncio.gather(
        *(store.get_or_create_assignment(key, "racer") for _ in range(50))
    )
    assert all(r is not None for r in results)
    assert all(r == results[0] for r in results)
    rows = await pool.fetchval("SELECT count(*) FROM assignments WHERE experiment_id = $1", key)
    assert rows == 1


# --- the query counter ------------------------------------------------------


async def test_query_counter_counts_calls_that_reach_postgres(store: PostgresStore) -> None:
    key = uid("exp")
    assert store.queries == 0
    await store.upsert_experiment(experiment(key))
    assert store.queries == 1
    await store.get_experiment(key)
    assert store.queries == 2
    await store.get_experiments([])
    await store.get_user_profiles([])
    assert store.queries == 2
    await store.get_or_create_assignment(key, "user-1")  # read + insert: one call
    assert store.queries == 3
    await store.get_or_create_assignment(key, "user-1")
    await store.get_user_profile(uid("user"))
    assert store.queries == 5
    with pytest.raises(errors.InvalidArgument):
        await store.upsert_user_profile(UserProfile(user_id="bad id"))
    assert store.queries == 5
