"""Fault-injection fixtures: servers on private backends the tests may break.

Every scenario gets its own Valkey (``RestartableValkey``; SIGSTOP-able) and
its own database on a PostgreSQL of the fault suite (an embedded pgserver
under a temporary folder, stoppable). The machine's shared Redis and
PostgreSQL are never used here, let alone stopped.

The tables the scenarios print are repeated in the terminal summary (no
``-s`` needed) and written to ``.pytest_cache/d/faults/report.txt``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import backends
from tests.e2e.conftest import ServerProcess, free_port, running_server
from tests.faults import harness
from tests.faults.harness import PrivatePostgres

Launch = Callable[..., contextlib.AbstractContextManager[ServerProcess]]


@pytest.fixture(scope="session")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    server = PrivatePostgres(tmp_path_factory.mktemp("faults-pg") / "pg")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[backends.RestartableValkey]:
    with backends.restartable_valkey(tmp_path / "valkey") as server:
        yield server


@pytest.fixture
def postgres_db(private_postgres: PrivatePostgres) -> Iterator[str]:
    """A database of this test on the private PostgreSQL."""
    dsn = asyncio.run(backends.create_database(private_postgres.admin_dsn))
    try:
        yield dsn
    finally:
        if private_postgres.running():
            asyncio.run(backends.drop_database(private_postgres.admin_dsn, dsn))


@pytest.fixture
def launch(tmp_path: Path, valkey: backends.RestartableValkey, postgres_db: str) -> Launch:
    """``launch(**env)``: a server on this test's Valkey and database, metrics on.

    The server's ``metrics_port`` attribute is where ``/metrics`` answers.
    """

    @contextlib.contextmanager
    def start(**settings: Any) -> Iterator[ServerProcess]:
        port = free_port()
        env = {"METRICS_ADDRESS": f"127.0.0.1:{port}"} | {k: str(v) for k, v in settings.items()}
        redis_url = env.pop("REDIS_URL", valkey.url)
        with running_server(
            tmp_path / "server",
            redis_url=redis_url,
            postgres_dsn=postgres_db,
            clean_redis=False,  # a private Valkey, discarded after the test
            **env,
        ) as server:
            server.metrics_port = port  # type: ignore[attr-defined]
            yield server

    return start


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not harness.REPORT:
        return
    text = "\n\n".join(harness.REPORT) + "\n"
    terminalreporter.write_sep("=", "fault-injection report")
    terminalreporter.write_line(text)
    if getattr(config, "cache", None) is not None:
        path = config.cache.mkdir("faults") / "report.txt"  # type: ignore[attr-defined]
        path.write_text(text)
        terminalreporter.write_line(f"(also in {path})")
