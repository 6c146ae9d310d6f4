"""Hostile and random requests at every RPC of a live server.

Requests are drawn from the generated messages' descriptors (every field of
every nested message, oneofs set or left empty, unknown enum numbers), with
values chosen to hurt: glob characters and key separators, huge and unicode
strings, NaN and infinities, negative and extreme integers, timestamps far
outside any sensible range. Every answer must be OK or a clean client error:

* INVALID_ARGUMENT: the request is malformed (most answers);
* NOT_FOUND: a well-formed id that does not exist;
* FAILED_PRECONDITION: e.g. an assignment in an experiment that is not running;
* ABORTED / ALREADY_EXISTS: an upsert with a stale or colliding version;
* RESOURCE_EXHAUSTED: a request beyond a server limit (message size).

Never INTERNAL or UNKNOWN (a bug), nor UNAVAILABLE (no store is down here),
and the server must still be SERVING afterwards.

Reproducible: by default Hypothesis is derandomized (each test's examples
follow from its own code), so a failing run fails again the same way, in CI
and on a laptop. ``MCPROUTER_FUZZ_SEED=<n>`` explores other inputs from seed
``n`` (``random`` picks one); every failure message names how to replay it.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from tests.e2e.conftest import Launcher, ServerProcess

pytestmark = pytest.mark.e2e

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SEED_ENV = "MCPROUTER_FUZZ_SEED"


def _seed_from_environment() -> int | None:
    """None (derandomized, the default) or the seed to explore from."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return None
    return random.SystemRandom().randrange(2**32) if raw == "random" else int(raw)


SEED = _seed_from_environment()
REPLAY = (
    "derandomized: the same command replays it"
    if SEED is None
    else f"seed {SEED}: {SEED_ENV}={SEED} replays it"
)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=SEED is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    print_blob=True,
)


def seeded(test: Callable[..., None]) -> Callable[..., None]:
    """``@seed(SEED)`` when exploring; derandomized tests need none."""
    return test if SEED is None else seed(SEED)(test)


HOSTILE_STRINGS = [
    "",
    "*",
    "?",
    "[",
    "]",
    "\\",
    "a:b",
    "experiment:*",
    "metrics:x:*",
    "user:*:profile",
    "search:c:" + "?" * 20,
    "..",
    "-",
    "x" * 128,
    "x" * 129,
    "x" * 70_000,
    "é",
    "\U0001d518\U0001d52b\u202e\ufeff",
    "\x00",
    "line\nbreak",
    "prod:experiment:1",
    "' OR 1=1 --",
    "{x:String}",
    "$where",
    "0",
    "exp-1",
]
_valid_text = st.characters(exclude_categories=("Cs",))
STRINGS = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.text(_valid_text, max_size=40),
    st.text(st.sampled_from("ab01_.-:*?[]\\ "), min_size=1, max_size=140),
)
FLOATS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
)
INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (lo, hi, -1, 0, 1, 2, 100, 101, 4097, 2**31 - 1) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return STRINGS
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return FLOATS if t == FieldDescriptor.TYPE_DOUBLE else FLOATS.map(_as_float32)
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 1000))
    lo, hi = INT_BOUNDS[t]
    return _ints(lo, hi)


def _as_float32(value: float) -> float:
    if math.isnan(value) or math.isinf(value) or abs(value) < 3.4e38:
        return value
    return math.copysign(math.inf, value)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> dict[str, Any]:
    """Field values of one message, as keyword arguments; oneofs get at most one member."""
    values: dict[str, Any] = {}
    chosen_oneof: dict[str, str | None] = {
        o.name: draw(st.sampled_from([None, *[f.name for f in o.fields]]))
        for o in descriptor.oneofs
        if not o.name.startswith("_")  # proto3 optional: synthetic oneofs
    }
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.name in chosen_oneof:
            if chosen_oneof[oneof.name] != field.name:
                continue
            force = True
        else:
            force = False
        if not force and not draw(st.booleans()):
            continue
        if _is_map(field):
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            value = (
                st.builds(dict)
                if value_field.message_type is not None and depth >= 3
                else (
                    messages(value_field.message_type, depth + 1)
                    if value_field.message_type is not None
                    else _scalar(value_field)
                )
            )
            values[field.name] = draw(st.dictionaries(_scalar(key_field), value, max_size=5))
            continue
        if field.message_type is not None:
            if depth >= 3 and not force:
                continue
            inner = messages(field.message_type, depth + 1)
        else:
            inner = _scalar(field)
        if field.is_repeated:
            big = draw(st.sampled_from([False, False, False, True]))
            if big and field.message_type is None:
                values[field.name] = [draw(inner)] * 1001
            else:
                values[field.name] = draw(st.lists(inner, max_size=4))
        else:
            values[field.name] = draw(inner)
    return values


def build(message_type: type[Message], values: dict[str, Any]) -> Message:
    """Make the message; nested dicts become messages (recursively)."""
    message = message_type()
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.message_type is not None:
                    target[k].CopyFrom(build(type(target[k]), v))
                else:
                    target[k] = v
        elif field.is_repeated:
            if field.message_type is not None:
                for item in value:
                    element = target.add()
                    element.CopyFrom(build(type(element), item))
            else:
                target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(build(type(target), value))
        else:
            setattr(message, name, value)
    return message


def requests(message_type: type[Message], case: str | None = None) -> st.SearchStrategy[Message]:
    """Random messages of ``message_type``; with ``case``, that oneof member always set."""
    descriptor = message_type.DESCRIPTOR

    @st.composite
    def draw_one(draw: st.DrawFn) -> Message:
        values = draw(messages(descriptor))
        if case is not None:
            field = descriptor.fields_by_name[case]
            for other in field.containing_oneof.fields:
                values.pop(other.name, None)
            values[case] = draw(messages(field.message_type, 1))
        return build(message_type, values)

    return draw_one()


@pytest.fixture(scope="module")
def fuzz_server(launch_server: Launcher) -> Iterator[ServerProcess]:
    """A server of its own: the fuzzer's writes never reach the shared one's data."""
    with launch_server("fuzz") as server:
        yield server


@pytest.fixture(scope="module")
def stub(fuzz_server: ServerProcess) -> Iterator[rs_grpc.RouterServiceStub]:
    with grpc.insecure_channel(fuzz_server.target) as channel:
        yield rs_grpc.RouterServiceStub(channel)


def check(call: Any, request: Message) -> None:
    try:
        call(request, timeout=20)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        assert code in ALLOWED, (
            f"{code}: {error.details()} for {request!r:.2000} ({REPLAY})"  # type: ignore[attr-defined]
        )


ROUTE_CASES = [f.name for f in rs.RouteDataRequest.DESCRIPTOR.oneofs_by_name["operation"].fields]


@pytest.mark.parametrize("case", [*ROUTE_CASES, None])
def test_route_data(stub: rs_grpc.RouterServiceStub, case: str | None) -> None:
    @FUZZ
    @seeded
    @given(requests(rs.RouteDataRequest, case))
    def run(request: Message) -> None:
        check(stub.RouteData, request)

    run()


@pytest.mark.parametrize(
    ("rpc", "message_type"),
    [
        ("GetCached", rs.GetCachedRequest),
        ("Invalidate", rs.InvalidateRequest),
        ("Stats", rs.StatsRequest),
    ],
)
def test_cache_rpcs(stub: rs_grpc.RouterServiceStub, rpc: str, message_type: type[Message]) -> None:
    @settings(FUZZ, max_examples=150)
    @seeded
    @given(requests(message_type))
    def run(request: Message) -> None:
        check(getattr(stub, rpc), request)

    run()


def test_server_is_still_serving(fuzz_server: ServerProcess) -> None:
    with grpc.insecure_channel(fuzz_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mcprouter.v1.RouterService", "redis", "postgres"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    assert "unhandled error" not in fuzz_server.log()
