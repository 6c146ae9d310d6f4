"""The contract as a ``grpcurl`` user sees it: reflection, JSON bodies, rich errors."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.e2e.conftest import GrpcurlRunner

pytestmark = pytest.mark.e2e

ROUTER = "mcprouter.v1.RouterService"


def ok_json(run_grpcurl: GrpcurlRunner, *args: str, data: dict | None = None) -> dict:
    """Run a call that must succeed; return its JSON answer."""
    result = run_grpcurl(*args, data=data)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def failed_output(run_grpcurl: GrpcurlRunner, *args: str, data: dict | None = None) -> str:
    """Run a call that must fail; return everything grpcurl printed."""
    result = run_grpcurl(*args, data=data)
    assert result.returncode != 0, result.stdout
    return result.stdout + result.stderr


def field_violations(output: str) -> list[str]:
    """The ``field`` of every BadRequest violation grpcurl printed."""
    fields = []
    for line in output.splitlines():
        _, _, detail = line.partition(")")
        detail = detail.strip()
        if detail.startswith("{") and "google.rpc.BadRequest" in detail:
            fields += [v["field"] for v in json.loads(detail)["field_violations"]]
    return fields


def test_list_shows_router_health_and_reflection(run_grpcurl: GrpcurlRunner) -> None:
    result = run_grpcurl("list")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {
        ROUTER,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


def test_describe_service_shows_every_rpc(run_grpcurl: GrpcurlRunner) -> None:
    result = run_grpcurl("describe", ROUTER)
    assert result.returncode == 0, result.stderr
    for rpc in ("RouteData", "GetCached", "Invalidate", "Stats"):
        assert f"rpc {rpc} (" in result.stdout


def test_describe_service_shows_proto_comments(run_grpcurl: GrpcurlRunner) -> None:
    result = run_grpcurl("describe", ROUTER)
    assert result.returncode == 0, result.stderr
    assert "RouteData performs one read or write operation" in result.stdout
    assert "RouterService routes the experimentation platform's data requests" in result.stdout
    fields = run_grpcurl("describe", "mcprouter.v1.Event")
    assert "event_id is the client-chosen unique id" in fields.stdout


def test_describe_request_shows_oneof_cases(run_grpcurl: GrpcurlRunner) -> None:
    result = run_grpcurl("describe", "mcprouter.v1.RouteDataRequest")
    assert result.returncode == 0, result.stderr
    assert "oneof operation {" in result.stdout
    for case in (
        "get_experiment",
        "get_assignment",
        "get_user_profile",
        "get_event_metrics",
        "get_analytics",
        "semantic_search",
        "track_events",
        "upsert_experiment",
        "upsert_user_profile",
        "upsert_embeddings",
    ):
        assert f" {case} = " in result.stdout, case


@pytest.mark.parametrize("service", ["", "mcprouter.v1.RouterService", "redis", "postgres"])
def test_health_check_serving(run_grpcurl: GrpcurlRunner, service: str) -> None:
    answer = ok_json(run_grpcurl, "grpc.health.v1.Health/Check", data={"service": service})
    assert answer == {"status": "SERVING"}


def test_health_check_unknown_service_is_not_found(run_grpcurl: GrpcurlRunner) -> None:
    output = failed_output(
        run_grpcurl, "grpc.health.v1.Health/Check", data={"service": "no-such-backend"}
    )
    assert "NotFound" in output


def test_route_data_bad_id_names_the_field(run_grpcurl: GrpcurlRunner) -> None:
    output = failed_output(
        run_grpcurl,
        f"{ROUTER}/RouteData",
        data={"get_experiment": {"experiment_id": "bad id*"}},
    )
    assert "Code: InvalidArgument" in output
    assert "mcprouter.v1" in output  # ErrorInfo domain
    assert field_violations(output) == ["get_experiment.experiment_id"]


def test_route_data_without_operation_names_operation(run_grpcurl: GrpcurlRunner) -> None:
    output = failed_output(run_grpcurl, f"{ROUTER}/RouteData", data={})
    assert "Code: InvalidArgument" in output
    assert field_violations(output) == ["operation"]


def test_invalidate_bare_star_is_refused(run_grpcurl: GrpcurlRunner) -> None:
    output = failed_output(run_grpcurl, f"{ROUTER}/Invalidate", data={"pattern": "*"})
    assert "Code: InvalidArgument" in output
    assert field_violations(output) == ["pattern"]


def unique_key(family: str = "experiment") -> str:
    """A cache key no other test (on this shared server) reads or writes."""
    if family == "user":
        return f"user:e2e-{uuid.uuid4().hex[:12]}:profile"
    return f"{family}:e2e-{uuid.uuid4().hex[:12]}"


def test_get_cached_reports_a_miss(run_grpcurl: GrpcurlRunner) -> None:
    key = unique_key()
    answer = ok_json(run_grpcurl, f"{ROUTER}/GetCached", data={"keys": [key]})
    [entry] = answer["entries"]
    assert entry["key"] == key
    assert entry.get("hit", False) is False
    assert entry["dataType"] == "DATA_TYPE_EXPERIMENT"
    assert answer.get("hits", 0) == 0
    assert answer["misses"] == 1


def test_stats_counts_operations(run_grpcurl: GrpcurlRunner) -> None:
    before = ok_json(run_grpcurl, "-emit-defaults", f"{ROUTER}/Stats")
    keys = [unique_key("user") for _ in range(3)]
    for key in keys:
        answer = ok_json(run_grpcurl, f"{ROUTER}/GetCached", data={"keys": [key]})
        assert [e["key"] for e in answer["entries"]] == [key]
        assert (answer.get("hits", 0), answer["misses"]) == (0, 1)
    after = ok_json(run_grpcurl, "-emit-defaults", f"{ROUTER}/Stats")
    # uint64 is a JSON string in the proto3 JSON mapping. Other tests share the
    # server, so its counter grew by at least this test's three calls.
    assert int(after["totalOperations"]) - int(before["totalOperations"]) >= len(keys)
    assert after["redisAvailable"] is True
    assert {t["dataType"] for t in after["dataTypes"]} >= {
        "DATA_TYPE_EXPERIMENT",
        "DATA_TYPE_EVENT_METRICS",
    }
