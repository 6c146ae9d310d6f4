"""TLS, mutual TLS, bearer tokens, the in-flight bound and deadlines, in-process.

Each test builds a real grpc.aio server with ``build_server`` and an explicit
``SecurityConfig`` on port 0. Behind it is a small app: a ``Router`` whose
``get_experiment`` handler the test controls, and fakes for the cache-only
RPCs; no store is needed to test the edge. Certificates are made inside the
test with ``cryptography``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from mcprouter.server import budget as deadlines
from mcprouter.server.config import Settings
from mcprouter.server.edge.security import SecurityConfig, add_port, parse_tokens
from mcprouter.server.edge.server import build_server
from mcprouter.server.errors import CacheUnavailable
from mcprouter.server.operations import GET_EXPERIMENT
from mcprouter.server.router import Router, RouteResult
from mcprouter.server.stats import CacheStats
from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1 import router_service_pb2_grpc as rs_grpc
from mcprouter.v1.experiment_pb2 import Experiment
from mcprouter.v1.serve_status_pb2 import ServeStatus
from tests.conditions import eventually

GET = rs.RouteDataRequest(get_experiment=rs.GetExperimentOperation(experiment_id="exp-1"))
TOKEN = "s3cret-token-for-tests"


# --- certificates -----------------------------------------------------------------


@dataclass
class Pki:
    folder: Path
    ca: Path = field(init=False)
    server_cert: Path = field(init=False)
    server_key: Path = field(init=False)
    client_cert: Path = field(init=False)
    client_key: Path = field(init=False)
    rogue_cert: Path = field(init=False)
    rogue_key: Path = field(init=False)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1], hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path.with_suffix(".pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    out = Pki(folder)
    ca = _ca("mcp-router test CA")
    out.ca = folder / "ca.pem"
    out.ca.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    out.server_cert = _write(folder / "server", *_leaf("localhost", ca, server=True))
    out.server_key = out.server_cert.with_suffix(".key")
    out.client_cert = _write(folder / "client", *_leaf("caller", ca, server=False))
    out.client_key = out.client_cert.with_suffix(".key")
    rogue_ca = _ca("someone else's CA")
    out.rogue_cert = _write(folder / "rogue", *_leaf("rogue", rogue_ca, server=False))
    out.rogue_key = out.rogue_cert.with_suffix(".key")
    return out


# --- an in-process server ------------------------------------------------------------


class Gate:
    """Controls the fake ``get_experiment`` handler: counts entries, blocks until opened."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.opened.set()
        self.entered = 0
        self.remaining_seen: list[float] = []

    async def handler(self, op: rs.GetExperimentOperation) -> RouteResult:
        self.entered += 1
        self.remaining_seen.append(deadlines.remaining(1e9))
        await self.opened.wait()
        return RouteResult(
            status=ServeStatus.SERVE_STATUS_FRESH,
            value=Experiment(experiment_id=op.experiment_id),
            cache_key=f"experiment:{op.experiment_id}",
        )


class NoRedis:
    async def figures(self) -> Any:
        raise CacheUnavailable("no Redis in this test")


@dataclass
class Running:
    port: int
    gate: Gate

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"


ServerFactory = Callable[[SecurityConfig], Awaitable[Running]]


@pytest.fixture
async def start_server() -> AsyncIterator[ServerFactory]:
    servers: list[grpc.aio.Server] = []

    async def start(config: SecurityConfig) -> Running:
        gate = Gate()
        app = SimpleNamespace(
            settings=Settings(_env_file=None),  # type: ignore[call-arg]
            router=Router({GET_EXPERIMENT: gate.handler}),
            cache_ops=NoRedis(),
            stats=CacheStats(),
            fleet=None,
        )
        health = health_aio.HealthServicer()
        server = build_server(app, health, config)  # type: ignore[arg-type]
        port = add_port(server, "localhost:0", config)
        assert port
        await server.start()
        servers.append(server)
        return Running(port, gate)

    yield start
    for server in servers:
        await server.stop(None)


def channel(
    running: Running,
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> grpc.aio.Channel:
    if ca is None:
        return grpc.aio.insecure_channel(running.target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=None if key is None else key.read_bytes(),
        certificate_chain=None if cert is None else cert.read_bytes(),
    )
    return grpc.aio.secure_channel(running.target, credentials)


async def health_check(ch: grpc.aio.Channel, **kwargs: Any) -> int:
    reply = await health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(), timeout=5, **kwargs
    )
    return int(reply.status)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, error
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {error!r}")


# --- TLS ------------------------------------------------------------------------------


async def test_tls_serves_clients_that_trust_the_ca(start_server: ServerFactory, pki: Pki) -> None:
    running = await start_server(
        SecurityConfig(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    )
    async with channel(running, ca=pki.ca) as ch:
        assert await health_check(ch) == health_pb2.HealthCheckResponse.SERVING
        reply = await rs_grpc.RouterServiceStub(ch).RouteData(GET, timeout=5)
        assert reply.experiment.experiment_id == "exp-1"
    async with channel(running) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_check(plain)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    start_server: ServerFactory, pki: Pki
) -> None:
    running = await start_server(
        SecurityConfig(
            tls_cert_file=pki.server_cert,
            tls_key_file=pki.server_key,
            tls_client_ca_file=pki.ca,
        )
    )
    async with channel(running, ca=pki.ca) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_check(anonymous)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    async with channel(running, ca=pki.ca, cert=pki.rogue_cert, key=pki.rogue_key) as rogue:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_check(rogue)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    async with channel(running, ca=pki.ca, cert=pki.client_cert, key=pki.client_key) as ok:
        assert await health_check(ok) == health_pb2.HealthCheckResponse.SERVING
        reply = await rs_grpc.RouterServiceStub(ok).RouteData(GET, timeout=5)
        assert reply.experiment.experiment_id == "exp-1"


def test_config_rejects_half_a_tls_setup(pki: Pki) -> None:
    with pytest.raises(ValueError, match="together"):
        SecurityConfig(tls_cert_file=pki.server_cert)
    with pytest.raises(ValueError, match="mutual TLS"):
        SecurityConfig(tls_client_ca_file=pki.ca)


# --- bearer tokens --------------------------------------------------------------------


async def test_bearer_token_is_required_except_for_health_and_reflection(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    running = await start_server(SecurityConfig(auth_tokens=("other-token", TOKEN)))
    async with channel(running) as ch:
        stub = rs_grpc.RouterServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RouteData(GET, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(caught.value).reason == "MISSING_BEARER_TOKEN"

        for bad in ("Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer ", TOKEN):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.RouteData(GET, timeout=5, metadata=(("authorization", bad),))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, bad
            assert error_info(caught.value).reason == "INVALID_BEARER_TOKEN"

        for good in (f"Bearer {TOKEN}", f"bearer {TOKEN}", "Bearer other-token"):
            reply = await stub.RouteData(GET, timeout=5, metadata=(("authorization", good),))
            assert reply.experiment.experiment_id == "exp-1"
        assert running.gate.entered == 3  # refused calls never reached the handler

        # Probes and grpcurl list work without a token.
        assert await health_check(ch) == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = [
            r
            async for r in reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        ]
        names = {s.name for s in replies[0].list_services_response.service}
        assert "mcprouter.v1.RouterService" in names
    assert TOKEN not in caplog.text
    assert "refused /mcprouter.v1.RouterService/RouteData" in caplog.text


async def test_exempt_methods_can_be_narrowed(start_server: ServerFactory) -> None:
    running = await start_server(SecurityConfig(auth_tokens=(TOKEN,), auth_exempt_methods=()))
    async with channel(running) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_check(ch)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch.read()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reflect = reflection_pb2_grpc.ServerReflectionStub(ch)
        listing = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [r async for r in reflect.ServerReflectionInfo(listing, timeout=5)]
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

        auth = (("authorization", f"Bearer {TOKEN}"),)
        assert await health_check(ch, metadata=auth) == health_pb2.HealthCheckResponse.SERVING
        # Streams in both directions pass once the token checks out.
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(), timeout=5, metadata=auth
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        listing = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        replies = [r async for r in reflect.ServerReflectionInfo(listing, timeout=5, metadata=auth)]
        names = {s.name for s in replies[0].list_services_response.service}
        assert "mcprouter.v1.RouterService" in names


def test_token_config_is_parsed_and_never_shown(tmp_path: Path) -> None:
    assert parse_tokens(" a, b ,,\n# comment, x\nc\n") == ("a", "b", "c")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("from-file\n")
    settings = Settings(_env_file=None, auth_tokens="t1,t2", auth_tokens_file=tokens_file)
    config = SecurityConfig.from_settings(settings)
    assert config.auth_tokens == ("t1", "t2", "from-file")
    assert "t1" not in repr(config)
    assert "t1" not in repr(settings)
    assert SecurityConfig.from_settings(Settings(_env_file=None)) == SecurityConfig()


# --- in-flight bound ----------------------------------------------------------------


async def test_calls_beyond_the_in_flight_bound_are_refused_at_once(
    start_server: ServerFactory,
) -> None:
    running = await start_server(SecurityConfig(max_in_flight_rpcs=2))
    gate = running.gate
    gate.opened.clear()
    async with channel(running) as ch:
        stub = rs_grpc.RouterServiceStub(ch)
        held = [asyncio.ensure_future(stub.RouteData(GET, timeout=10)) for _ in range(2)]
        await eventually(lambda: gate.entered == 2, "both held calls inside the handler")

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RouteData(GET, timeout=5)
        # Refused, not queued: the answer came while both slots were still held
        # (the gate is shut, so neither held call can have finished), and the
        # third call never reached a handler.
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not any(call.done() for call in held)
        info = error_info(caught.value)
        assert info.reason == "TOO_MANY_IN_FLIGHT_RPCS"
        assert info.metadata["limit"] == "2"
        assert gate.entered == 2
        # A saturated server still answers its probes.
        assert await health_check(ch) == health_pb2.HealthCheckResponse.SERVING

        gate.opened.set()
        for reply in await asyncio.gather(*held):
            assert reply.experiment.experiment_id == "exp-1"
        # The slots are free again.
        replies = await asyncio.gather(*(stub.RouteData(GET, timeout=5) for _ in range(2)))
        assert len(replies) == 2


async def test_a_failing_call_frees_its_slot(start_server: ServerFactory) -> None:
    running = await start_server(SecurityConfig(max_in_flight_rpcs=1))
    async with channel(running) as ch:
        stub = rs_grpc.RouterServiceStub(ch)
        bad = rs.RouteDataRequest(get_experiment=rs.GetExperimentOperation(experiment_id="a*"))
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.RouteData(bad, timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (await stub.RouteData(GET, timeout=5)).experiment.experiment_id == "exp-1"


# --- deadlines ------------------------------------------------------------------------


async def test_the_handler_sees_the_callers_deadline(start_server: ServerFactory) -> None:
    running = await start_server(SecurityConfig())
    async with channel(running) as ch:
        stub = rs_grpc.RouterServiceStub(ch)
        await stub.RouteData(GET, timeout=3)
        await stub.RouteData(GET)  # no deadline
    with_deadline, without = running.gate.remaining_seen
    assert 2.0 < with_deadline <= 3.0
    assert without == 1e9


async def test_remaining_binds_only_the_task_that_set_it() -> None:
    deadlines.set_timeout(0.5)
    try:
        assert 0.0 < deadlines.remaining(10.0) <= 0.5
        assert deadlines.remaining(0.1) == 0.1
        assert deadlines.remaining(None) is not None

        # A task started by the call (a background retry, a shared load) keeps its own bound.
        async def child() -> float:
            return deadlines.remaining(10.0)

        assert await asyncio.create_task(child()) == 10.0
        deadlines.set_timeout(-1.0)
        assert deadlines.remaining(10.0) == 0.0
    finally:
        deadlines.set_timeout(None)
    assert deadlines.remaining(None) is None


@pytest.mark.parametrize("tokens", [(), (TOKEN,)], ids=["open", "with-auth"])
async def test_a_body_that_does_not_parse_is_invalid_argument(
    start_server: ServerFactory, tokens: tuple[str, ...]
) -> None:
    running = await start_server(SecurityConfig(auth_tokens=tokens))
    auth = (("authorization", f"Bearer {TOKEN}"),)
    async with channel(running) as ch:
        route_data = ch.unary_unary("/mcprouter.v1.RouterService/RouteData")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await route_data(b"\xff\xff\xff\x01", timeout=5, metadata=auth)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "RouteDataRequest" in (caught.value.details() or "")
        assert error_info(caught.value).reason == "INVALID_ARGUMENT"
        if tokens:  # without a token, the body is refused before it is read
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await route_data(b"\xff\xff\xff\x01", timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The server is unharmed and a well-formed call still works.
        stub = rs_grpc.RouterServiceStub(ch)
        reply = await stub.RouteData(GET, timeout=5, metadata=auth)
        assert reply.experiment.experiment_id == "exp-1"
    assert running.gate.entered == 1
