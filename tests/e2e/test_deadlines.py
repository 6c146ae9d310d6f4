"""A caller's deadline reaches PostgreSQL: a call past it leaves no query running.

The test makes the server's UPDATE slow without any hook in production code:
it holds the experiment's row lock (``SELECT ... FOR UPDATE``) in its own
transaction, so the server's optimistic-concurrency UPDATE waits on it.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant
from tests.conditions import eventually_async

pytestmark = pytest.mark.e2e

UPDATES_SQL = """
SELECT pid, state, wait_event_type, query FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND state <> 'idle' AND query ILIKE '%UPDATE experiments%'
"""
# The call's deadline: long enough that the server's UPDATE is seen waiting on
# the row lock before it passes, even on a busy machine.
DEADLINE_S = 2.0


def _upsert(experiment_id: str, version: int, name: str) -> rs.RouteDataRequest:
    return rs.RouteDataRequest(
        upsert_experiment=rs.UpsertExperimentOperation(
            experiment=Experiment(
                experiment_id=experiment_id,
                name=name,
                status=ExperimentStatus.EXPERIMENT_STATUS_DRAFT,
                variants=[Variant(name="control", weight=50), Variant(name="treatment", weight=50)],
                version=version,
            )
        )
    )


async def test_a_deadline_cancels_the_waiting_update(server_target: str, postgres_dsn: str) -> None:
    experiment_id = f"deadline-{uuid.uuid4().hex[:8]}"
    # One connection holds the row lock; another watches pg_stat_activity
    # (inside a transaction, PostgreSQL would show one frozen snapshot of it).
    conn = await asyncpg.connect(postgres_dsn)
    monitor = await asyncpg.connect(postgres_dsn)

    async def updates() -> list[asyncpg.Record]:
        return list(await monitor.fetch(UPDATES_SQL))

    try:
        async with grpc.aio.insecure_channel(server_target) as channel:
            stub = rs_grpc.RouterServiceStub(channel)
            created = await stub.RouteData(_upsert(experiment_id, 0, "first"), timeout=10)
            assert created.experiment.version == 1

            lock = conn.transaction()
            await lock.start()
            try:
                await conn.fetchrow(
                    "SELECT version FROM experiments WHERE experiment_id = $1 FOR UPDATE",
                    experiment_id,
                )
                call = asyncio.ensure_future(
                    stub.RouteData(_upsert(experiment_id, 1, "second"), timeout=DEADLINE_S)
                )

                # The order that matters: the server's UPDATE waits on our lock ...
                async def waiting_on_the_lock() -> bool:
                    assert not call.done(), "the call ended before its UPDATE waited on the lock"
                    return any(r["wait_event_type"] == "Lock" for r in await updates())

                await eventually_async(waiting_on_the_lock, "the server's UPDATE waiting")
                # ... the caller's deadline passes while we still hold it ...
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

                # ... and the UPDATE is cancelled in PostgreSQL, not left waiting.
                # The cancel travels on its own connection: wait for it (bounded).
                async def no_update_left() -> bool:
                    return not await updates()

                await eventually_async(no_update_left, "the waiting UPDATE cancelled")
            finally:
                await lock.rollback()

            # Had the UPDATE survived, it would be queued on the row lock ahead
            # of this one and would have committed by the time we get it.
            async with conn.transaction():
                version = await conn.fetchval(
                    "SELECT version FROM experiments WHERE experiment_id = $1 FOR UPDATE",
                    experiment_id,
                )
            assert version == 1
            # The server is fine afterwards: the same update now goes through.
            updated = await stub.RouteData(_upsert(experiment_id, 1, "second"), timeout=10)
            assert updated.experiment.version == 2
    finally:
        await monitor.close()
        await conn.close()
