"""``mcp-router cache get|ttl|scan|stats`` against the real Redis behind the e2e server.

The server's own namespace is inspected (never another one, never FLUSHALL):
values the server cached are decoded to JSON from outside the server, internal
families are shown by type, patterns that could cross families are refused,
and the shipped descriptor set (with its imports) lets ``protoc --decode``
read the same bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from mcprouter.client import Event, Experiment, ExperimentStatus, SyncRouterClient, Variant
from mcprouter.server.keys import KeySpace
from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = REPO / "generated/python/mcprouter/v1/descriptor_set.binpb"


def cache_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mcprouter.server.cli", "cache",
               "--redis-url", server.redis_url, "--namespace", server.namespace, *args]  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL
    )


def cache_json(server: ServerProcess, *args: str) -> Any:
    result = cache_cli(server, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def seeded(e2e_server: ServerProcess) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    experiment_id, event_id = f"insp-{run}", f"insp-ev-{run}"
    with SyncRouterClient.connect(e2e_server.target, default_timeout=10) as client:
        client.upsert_experiment(
            Experiment(
                experiment_id=experiment_id,
                name="Inspected",
                status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
                variants=[Variant(name="control", weight=1), Variant(name="b", weight=1)],
            )
        )
        client.get_experiment(experiment_id)  # FRESH: now cached
        event = Event(event_id=event_id, experiment_id=experiment_id, user_id="u1",
                      variant="control", event_type="click", value=2.5)  # fmt: skip
        event.timestamp.FromDatetime(datetime.now(UTC))
        client.track_events(event)
    return {"experiment_id": experiment_id, "event_id": event_id}


def test_get_decodes_envelope_and_payload(
    e2e_server: ServerProcess, seeded: dict[str, str]
) -> None:
    key = f"experiment:{seeded['experiment_id']}"
    view = cache_json(e2e_server, "get", key)
    print(json.dumps(view, indent=2))
    assert view["key"] == key and view["redis_key"] == KeySpace(e2e_server.namespace).redis_key(key)
    assert view["redis_type"] == "string" and view["ttl_ms"] > 0
    envelope = view["envelope"]
    assert envelope["data_type"] == "DATA_TYPE_EXPERIMENT" and envelope["schema_version"] == 1
    assert envelope["fresh"] is True and envelope["fresh_for_s"] > 0
    value = envelope["value"]
    assert value["experiment_id"] == seeded["experiment_id"] and value["name"] == "Inspected"
    assert value["variants"][0] == {"name": "control", "weight": 1}
    assert value["version"] == "1"  # int64 as JSON says, zeros and all fields shown


def test_ttl_scan_and_stats(e2e_server: ServerProcess, seeded: dict[str, str]) -> None:
    key = f"experiment:{seeded['experiment_id']}"
    ttl = cache_json(e2e_server, "ttl", key)
    assert ttl["state"] == "fresh" and ttl["ttl_ms"] > 0 and ttl["fresh_for_s"] > 0
    missing = cache_cli(e2e_server, "ttl", "experiment:insp-never")
    assert missing.returncode == 1 and json.loads(missing.stdout)["state"] == "missing"

    scanned = cache_cli(e2e_server, "scan", f"experiment:{seeded['experiment_id']}*")
    assert scanned.stdout.split() == [key]
    limited = cache_cli(e2e_server, "scan", "_dedup", "--limit", "1")
    assert limited.returncode == 0 and len(limited.stdout.split()) == 1

    stats = cache_json(e2e_server, "stats")
    assert stats["namespace"] == e2e_server.namespace and stats["complete"] is True
    assert stats["namespace_keys_by_family"]["experiment"] >= 1
    assert stats["namespace_keys_by_family"]["_dedup"] >= 1
    assert stats["redis_used_memory"] > 0


def test_internal_families_are_shown_by_type(
    e2e_server: ServerProcess, seeded: dict[str, str]
) -> None:
    dedup = cache_json(e2e_server, "get", f"_dedup:{seeded['event_id']}")
    assert dedup["redis_type"] == "string" and dedup["ttl_ms"] > 0 and dedup["value"]
    hour = datetime.now(UTC).strftime("%Y%m%d%H")
    counters = cache_json(e2e_server, "get", f"_rt:{seeded['experiment_id']}:control:click:{hour}")
    assert counters["redis_type"] == "hash" and counters["value"]["count"] == "1"
    users = cache_json(
        e2e_server, "get", f"_rt:{seeded['experiment_id']}:control:click:{hour}:users"
    )
    assert users["value"] == {"hyperloglog_count": 1}


@pytest.mark.parametrize("pattern", ["*", "*:x", "nosuchfamily:*", "experiment:*" + "*" * 9])
def test_unsafe_patterns_are_refused(e2e_server: ServerProcess, pattern: str) -> None:
    result = cache_cli(e2e_server, "scan", pattern)
    assert result.returncode == 2 and "mcp-router cache:" in result.stderr, result.stderr


def test_protoc_decodes_with_the_shipped_descriptor_set(
    e2e_server: ServerProcess, seeded: dict[str, str]
) -> None:
    client = redis.Redis.from_url(e2e_server.redis_url)
    try:
        raw = client.get(
            KeySpace(e2e_server.namespace).redis_key(f"experiment:{seeded['experiment_id']}")
        )
    finally:
        client.close()
    assert isinstance(raw, bytes)

    def protoc_decode(message: str, data: bytes) -> str:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--descriptor_set_in={DESCRIPTOR_SET}",
                f"--decode={message}",
                "mcprouter/v1/cache_envelope.proto",
                "mcprouter/v1/experiment.proto",
            ],
            input=data,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    outer = protoc_decode("mcprouter.v1.CacheEnvelope", raw)
    assert "data_type: DATA_TYPE_EXPERIMENT" in outer and "stored_at {" in outer
    from mcprouter.v1.cache_envelope_pb2 import CacheEnvelope

    inner = protoc_decode("mcprouter.v1.Experiment", CacheEnvelope.FromString(raw).payload)
    assert f'experiment_id: "{seeded["experiment_id"]}"' in inner
