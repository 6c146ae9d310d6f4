"""The ClickHouse host of ``serve --workers N``, driven through ``ClickHouseStore``.

The host runs in a subprocess (chDB allows one engine per process, and this
test process may hold another); the store reaches it at ``unix://`` and
must behave as with any ClickHouse: rows in and out, a bad query stays a
bug, a host that is gone is ``Unavailable``, and one that is back is used
again without anyone reconnecting.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from mcprouter.server.clickhouse.store import open_clickhouse
from mcprouter.server.errors import Unavailable
from mcprouter.v1.events_pb2 import Event


class Host:
    """One host process on ``socket``, over chDB data in ``data``."""

    def __init__(self, folder: Path) -> None:
        self.socket = folder / "clickhouse.sock"
        self.data = folder / "data"
        self.log = folder / "host.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        code = (
            "import sys; from pathlib import Path\n"
            "from mcprouter.server.clickhouse.host import run_host\n"
            "run_host(Path(sys.argv[1]), Path(sys.argv[2]), lambda: print('ready', flush=True))\n"
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, str(self.socket), str(self.data)],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until ready (or exit)
        assert line.strip() == b"ready", self.log.read_text()

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                self.process.wait(timeout=20)
            if self.process.stdout is not None:
                self.process.stdout.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    running = Host(tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def event(event_id: str, value: float) -> Event:
    e = Event(
        event_id=event_id,
        experiment_id="host-exp",
        user_id=f"u-{event_id}",
        variant="control",
        event_type="conversion",
        value=value,
    )
    e.timestamp.FromDatetime(datetime(2026, 1, 2, 3, 15, tzinfo=UTC))
    return e


async def test_a_store_on_the_host_reads_writes_and_survives_a_restart(host: Host) -> None:
    store = await open_clickhouse(f"unix://{host.socket}", query_workers=2)
    try:
        await store.insert_events([event("a", 1.5), event("b", 2.5)])
        hour = datetime(2026, 1, 2, 3, tzinfo=UTC)
        metrics = await store.hour_metrics("host-exp", "control", "conversion", hour)
        assert (metrics.count, metrics.sum, metrics.unique_users) == (2, 4.0, 2)
        counts = await store.day_counts("host-exp", hour.replace(hour=0), "conversion")
        assert [(c.variant, c.exposed_users, c.total_value) for c in counts] == [
            ("control", 2, 4.0)
        ]
        # A bad query is a bug, not an outage: the driver's error, with its code.
        with pytest.raises(DatabaseError) as bad:
            await store.run(lambda client: client.query("SELECT no_such_column FROM events"))
        assert bad.value.code == 47  # UNKNOWN_IDENTIFIER
        await store.ping()
        host.stop()
        # The host is gone: Unavailable, reads and writes alike.
        with pytest.raises(Unavailable):
            await store.count_events("host-exp")
        with pytest.raises(Unavailable):
            await store.insert_events([event("c", 1.0)])
        host.start()  # returns once the host said "ready"
        # The very next calls succeed (no retry here): data kept, connection remade.
        assert await store.count_events("host-exp") == 2
        await store.insert_events([event("c", 1.0)])
        assert await store.count_events("host-exp") == 3
    finally:
        await store.close()
