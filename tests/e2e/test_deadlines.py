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

pytestmark = pytest.mark.e2e

LEFTOVER_SQL = """
SELECT pid, state, wait_event_type, query FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND state <> 'idle' AND query ILIKE '%UPDATE experiments%'
"""


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
    conn = await asyncpg.connect(postgres_dsn)
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
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.RouteData(_upsert(experiment_id, 1, "second"), timeout=0.5)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert loop.time() - started < 2.0

                # The server's UPDATE was cancelled in PostgreSQL, not left waiting.
                # The cancel travels on its own connection: poll (bounded, 10 s)
                # so a busy machine cannot fail this for being slow.
                leftovers: list[asyncpg.Record] = []
                for _ in range(200):
                    leftovers = await conn.fetch(LEFTOVER_SQL)
                    if not leftovers:
                        break
                    await asyncio.sleep(0.05)
                assert leftovers == [], [dict(r) for r in leftovers]
            finally:
                await lock.rollback()

            # Had the UPDATE survived, it would have run once the lock went away.
            await asyncio.sleep(0.2)
            version = await conn.fetchval(
                "SELECT version FROM experiments WHERE experiment_id = $1", experiment_id
            )
            assert version == 1
            # The server is fine afterwards: the same update now goes through.
            updated = await stub.RouteData(_upsert(experiment_id, 1, "second"), timeout=10)
            assert updated.experiment.version == 2
    finally:
        await conn.close()
