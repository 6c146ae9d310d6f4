"""The conformance scenario (scenario.json) through the Python client.

Usage: python run_python.py HOST:PORT [scenario.json]

Needs only ``mcprouter-client``. Every step calls the SDK method of its
``op``; the answer is normalized to what every runner produces (a short
status, the cache key, the value as proto JSON with field names as in the
.proto and defaults emitted, or the error's code, reason and first field
violation) and checked against ``expect``. Prints one line per step and
``conformance: N passed, M failed``; exits 1 on any failure.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from mcprouter.client import RouterError, Served, SyncRouterClient
from mcprouter.v1 import router_service_pb2 as rs

Outcome = dict[str, Any]


def variables() -> dict[str, str]:
    """The values of ${...} in the scenario, for this run."""
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    day = hour.replace(hour=0)

    def iso(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "run": "py-" + secrets.token_hex(4),
        "hour": iso(hour),
        "hour_minus_30m": iso(hour - timedelta(minutes=30)),
        "day": iso(day),
        "day_key": day.strftime("%Y%m%d"),
        "day_plus_1h": iso(day + timedelta(hours=1)),
    }


def substitute(value: Any, names: dict[str, str]) -> Any:
    """``value`` with every ``${name}`` in its strings replaced."""
    if isinstance(value, str):
        for name, text in names.items():
            value = value.replace("${" + name + "}", text)
        return value
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, names) for k, v in value.items()}
    return value


def to_json(message: Message) -> Any:
    """Proto JSON: names as in the .proto, defaults emitted, 64-bit integers as strings."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def parse(body: dict[str, Any], message: Message) -> Any:
    """``message`` filled from proto JSON."""
    return json_format.ParseDict(body, message)


def served(answer: Served[Any]) -> Outcome:
    """The normalized outcome of a RouteData answer."""
    return {
        "status": answer.status_name,
        "cache_key": answer.cache_key,
        "value": to_json(answer.value),
    }


def operations(client: SyncRouterClient) -> dict[str, Callable[[dict[str, Any]], Outcome]]:
    """One SDK call per op, its input parsed as the operation's proto JSON."""

    def invalidate(body: dict[str, Any]) -> Outcome:
        request = parse(body, rs.InvalidateRequest())
        case = request.WhichOneof("target")
        value: Any = list(request.keys.keys) if case == "keys" else getattr(request, str(case))
        removed = client.invalidate(**{str(case): value})
        return {"value": to_json(rs.InvalidateResponse(removed=removed))}

    def search(body: dict[str, Any]) -> Outcome:
        op = parse(body, rs.SemanticSearchOperation())
        flt = op.filter if op.HasField("filter") else None
        return served(client.search(op.collection, list(op.embedding), op.k, filter=flt))

    def get_event_metrics(body: dict[str, Any]) -> Outcome:
        op = parse(body, rs.GetEventMetricsOperation())
        hour = op.hour.ToDatetime(tzinfo=UTC)
        return served(client.get_event_metrics(op.experiment_id, op.variant, op.metric, hour))

    def get_analytics(body: dict[str, Any]) -> Outcome:
        op = parse(body, rs.GetAnalyticsOperation())
        return served(client.get_analytics(op.experiment_id, op.day.ToDatetime(tzinfo=UTC)))

    return {
        "get_experiment": lambda b: served(
            client.get_experiment(parse(b, rs.GetExperimentOperation()).experiment_id)
        ),
        "get_assignment": lambda b: served(
            client.get_assignment(
                *_fields(parse(b, rs.GetAssignmentOperation()), "experiment_id", "user_id")
            )
        ),
        "get_user_profile": lambda b: served(
            client.get_user_profile(parse(b, rs.GetUserProfileOperation()).user_id)
        ),
        "get_event_metrics": get_event_metrics,
        "get_analytics": get_analytics,
        "search": search,
        "upsert_experiment": lambda b: served(
            client.upsert_experiment(parse(b, rs.UpsertExperimentOperation()).experiment)
        ),
        "upsert_user_profile": lambda b: served(
            client.upsert_user_profile(parse(b, rs.UpsertUserProfileOperation()).profile)
        ),
        "track_events": lambda b: served(
            client.track_events(parse(b, rs.TrackEventsOperation()).events)
        ),
        "upsert_embeddings": lambda b: served(
            client.upsert_embeddings(
                *_fields(parse(b, rs.UpsertEmbeddingsOperation()), "collection", "items")
            )
        ),
        "get_cached": lambda b: {
            "value": to_json(client.get_cached(list(parse(b, rs.GetCachedRequest()).keys)))
        },
        "invalidate": invalidate,
        "stats": lambda b: {"value": to_json(client.stats())},
        "health": lambda b: {"value": client.health(b.get("service", ""))},
    }


def _fields(message: Message, *names: str) -> list[Any]:
    return [getattr(message, name) for name in names]


def failure(error: RouterError) -> Outcome:
    """The normalized outcome of a failed call."""
    first = error.field_violations[0] if error.field_violations else None
    return {
        "code": error.code.name,
        "reason": error.reason,
        "field": first.field if first else "",
        "field_reason": first.reason if first else "",
    }


def contains(actual: Any, expected: Any) -> bool:
    """``expected`` is a subset of ``actual``: dict keys recursively, lists element-wise."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) >= len(expected)
            and all(contains(a, e) for a, e in zip(actual, expected, strict=False))
        )
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        return (
            isinstance(actual, int | float) and not isinstance(actual, bool) and actual == expected
        )
    return bool(actual == expected)


def check(outcome: Outcome, expect: dict[str, Any]) -> str | None:
    """Why ``outcome`` differs from ``expect``, or ``None``."""
    if "code" in expect and "code" not in outcome:
        return f"expected {expect['code']}, got success {outcome.get('status', '')}"
    if "code" not in expect and "code" in outcome:
        return f"expected success, got {outcome['code']} {outcome['reason']}"
    for name, wanted in expect.items():
        if name == "value":
            if not contains(outcome.get("value"), wanted):
                return f"value {json.dumps(outcome.get('value'))} lacks {json.dumps(wanted)}"
        elif outcome.get(name) != wanted:
            return f"{name} {outcome.get(name)!r}, expected {wanted!r}"
    return None


def main(argv: list[str]) -> int:
    """Run every step against ``argv[1]``; 0 when all passed."""
    target = argv[1]
    path = Path(argv[2]) if len(argv) > 2 else Path(__file__).with_name("scenario.json")
    names = variables()
    steps = substitute(json.loads(path.read_text())["steps"], names)
    passed = failed = 0
    with SyncRouterClient.connect(target, default_timeout=15.0) as client:
        ops = operations(client)
        for number, step in enumerate(steps, 1):
            try:
                outcome = ops[step["op"]](step["input"])
            except RouterError as error:
                outcome = failure(error)
            problem = check(outcome, step["expect"])
            shown = outcome.get("code") or outcome.get("status") or "ok"
            if outcome.get("reason"):
                shown += f" {outcome['reason']}"
            if problem is None:
                passed += 1
                print(f"ok   {number:2} {step['name']}: {shown}")
            else:
                failed += 1
                print(f"FAIL {number:2} {step['name']}: {problem}")
    print(f"conformance (python, run {names['run']}): {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
