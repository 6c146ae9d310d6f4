"""Set-up of the realistic benchmark: data, the delaying proxy and three servers.

| server  | settings                            | namespace |
|---------|-------------------------------------|-----------|
| nocache | ``CACHE_ENABLED=false``             | ``n:``    |
| redis   | ``CACHE_LOCAL_MAX_ENTRIES=0``       | ``r:``    |
| l1      | the defaults (L1 in front of Redis) | ``c:``    |

Each is ``mcp-router serve`` with ``POSTGRES_DSN`` through one delaying proxy
(``_proxy``), Redis direct (local), and its own ``DATA_DIR`` holding a copy of
the same chDB folder (the events) and the same embedded Chroma folder (the
vectors), filled once by ``_realistic_data`` in subprocesses while PostgreSQL
is filled with COPY. Everything is removed on exit: processes by handle, the
database, the keys (SCAN + UNLINK), the temporary folder.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from _common import Channels, ServerProcess, free_port
from _data import copy_rows, migrated_database, open_backends, unlink_matching
from _proxy import ProxyProcess
from _servers import L1_MAX_AGE_S, L1_MAX_ENTRIES, router_server
from _workloads import experiment_id, user_id

ANALYTICS_EXPERIMENT = "exp-events"
VARIANTS = ("control", "treatment")
METRICS = ("exposure", "conversion")  # conversion: the processor's CONVERSION_EVENT_TYPE
COLLECTION = "bench-vectors"
SERVERS = ("nocache", "redis", "l1")
DATA = Path(__file__).with_name("_realistic_data.py")


@dataclass(frozen=True)
class Sizes:
    """How much data to load."""

    experiments: int
    users: int
    events: int
    vectors: int
    dim: int


@dataclass
class Env:
    """What the sections measure: servers, channels, proxy, where the data is."""

    processes: dict[str, ServerProcess]
    channels: dict[str, Channels]
    proxy: ProxyProcess
    proxied_dsn: str
    namespace: str
    redis_url: str
    day: datetime  # the UTC day the events cover
    load_note: str


def through(dsn: str, port: int) -> str:
    """``dsn`` with its host and port replaced by the proxy's (user and database kept)."""
    parts = urlsplit(dsn)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=(f"{user}@" if user else "") + f"127.0.0.1:{port}"))


async def run_loader(*argv: str) -> float:
    """Run ``_realistic_data.py`` with ``argv``; return the seconds it reported."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DATA),
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await process.communicate()
    except BaseException:  # cancelled (Ctrl-C, SIGTERM): the loader must not outlive the bench
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"loader {argv[0]} failed:\n{err.decode(errors='replace')[-2000:]}")
    return float(out.decode().split()[-1])


async def load_all(dsn: str, sizes: Sizes, day: datetime, tmp: Path) -> str:
    """PostgreSQL rows, events and vectors, loaded concurrently; a line saying how long."""
    started = time.perf_counter()
    experiments = [experiment_id(i) for i in range(sizes.experiments)] + [ANALYTICS_EXPERIMENT]
    users = [user_id(i) for i in range(sizes.users)]

    async def postgres() -> float:
        t0 = time.perf_counter()
        await copy_rows(dsn, experiments, users)
        return time.perf_counter() - t0

    pg_s, events_s, vectors_s = await asyncio.gather(
        postgres(),
        run_loader(
            "events",
            str(tmp / "seed" / "clickhouse"),
            ANALYTICS_EXPERIMENT,
            day.strftime("%Y-%m-%d"),
            str(sizes.events),
        ),
        run_loader("vectors", str(tmp / "seed" / "chroma"), str(sizes.vectors), str(sizes.dim)),
    )
    return (
        f"loaded in {time.perf_counter() - started:.0f} s: {len(experiments):,} experiments and "
        f"{sizes.users:,} profiles (COPY, {pg_s:.1f} s), {sizes.events:,} events of "
        f"{ANALYTICS_EXPERIMENT} on {day:%Y-%m-%d} (one chDB insert, {events_s:.1f} s), "
        f"{sizes.vectors:,} vectors x {sizes.dim} (Chroma upserts, {vectors_s:.1f} s)"
    )


def servers(
    proxied_dsn: str, redis_url: str, namespace: str, tmp: Path
) -> dict[str, ServerProcess]:
    """The three servers, each with a copy of the loaded chDB and Chroma folders."""
    common = {"POSTGRES_DSN": proxied_dsn, "REDIS_URL": redis_url}
    envs = {
        "nocache": {"CACHE_ENABLED": "false", "KEY_NAMESPACE": namespace + "n:"},
        "redis": {"CACHE_LOCAL_MAX_ENTRIES": "0", "KEY_NAMESPACE": namespace + "r:"},
        "l1": {
            "CACHE_LOCAL_MAX_ENTRIES": str(L1_MAX_ENTRIES),
            "CACHE_LOCAL_MAX_AGE_S": str(L1_MAX_AGE_S),
            "KEY_NAMESPACE": namespace + "c:",
        },
    }
    made = {}
    for name, env in envs.items():
        server = router_server(name, free_port(), {**common, **env}, tmp)
        for store in ("clickhouse", "chroma"):
            # chDB links its tables with relative symlinks: copy the links, not their targets.
            shutil.copytree(tmp / "seed" / store, tmp / name / store, symlinks=True)
        made[name] = server
    return made


async def probe_rtt(dsn: str, queries: int = 100) -> float:
    """Median milliseconds of ``SELECT 1`` over one connection to ``dsn``."""
    conn = await asyncpg.connect(dsn)
    took: list[float] = []
    try:
        for _ in range(queries):
            t0 = time.perf_counter()
            await conn.fetchval("SELECT 1")
            took.append((time.perf_counter() - t0) * 1000)
    finally:
        await conn.close()
    return sorted(took)[len(took) // 2]


@asynccontextmanager
async def realistic_env(
    sizes: Sizes, pg_dsn: str, redis_url: str, channels: int, rtt_ms: float, tmp: Path
) -> AsyncIterator[Env]:
    """Backends, database, proxy, data and servers; all removed or stopped on exit."""
    run_id = secrets.token_hex(4)
    database, namespace = f"mcprouter_bench_{run_id}", f"bench-{run_id}-"
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    async with AsyncExitStack() as stack:
        backends = await stack.enter_async_context(open_backends(pg_dsn, redis_url, tmp))
        print(
            f"backends: {'embedded' if backends.embedded else 'local servers'}; database "
            f"{database}; key namespaces {namespace}n: / r: / c:",
            flush=True,
        )
        dsn = await migrated_database(stack, backends, database)
        stack.push_async_callback(report_unlinked, backends.redis_url, namespace)
        target = urlsplit(dsn)
        proxy = ProxyProcess(
            (target.hostname or "127.0.0.1", target.port or 5432), rtt_ms, free_port()
        )
        stack.callback(proxy.stop)
        note = await load_all(dsn, sizes, day, tmp)
        print(note, flush=True)
        proxied = through(dsn, proxy.port)
        procs = servers(proxied, backends.redis_url, namespace, tmp)
        for server in procs.values():
            server.start(tmp)
            stack.callback(server.stop)
        await asyncio.gather(*(s.wait_healthy(timeout_s=180) for s in procs.values()))
        chans: dict[str, Channels] = {}
        for name, server in procs.items():
            chans[name] = Channels(server.target, channels)
            stack.push_async_callback(chans[name].close)
        yield Env(procs, chans, proxy, proxied, namespace, backends.redis_url, day, note)


async def report_unlinked(redis_url: str, namespace: str) -> None:
    """Remove this run's keys (every namespace) and say how many there were."""
    removed = await unlink_matching(redis_url, namespace + "*")
    print(f"cleanup: removed {removed:,} Redis keys under {namespace}*", flush=True)


def hours(day: datetime) -> Sequence[datetime]:
    """The 24 UTC hours of ``day``."""
    return [day + timedelta(hours=h) for h in range(24)]
