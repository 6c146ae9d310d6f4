"""Scale-out figures of the cache core: keyspace-independent invalidation, and a cluster.

Two tables, both measured in this process through the real cache core
(``CacheAside``) and the real PostgreSQL processor, L1 off:

1. **Experiment upsert latency with 0 and with N unrelated keys in Redis**
   (N = 5 million dedup-like keys by default, made server-side with
   ``DEBUG POPULATE`` on a private Valkey). Each upsert invalidates the
   experiment's derived metrics and analytics entries through the
   experiment's index, so its cost must not grow with the keyspace (the
   ratio is the figure). For contrast, one Invalidate-RPC-style pattern
   removal (SCAN) is timed on the same keyspaces.
2. **Single Redis vs a 3-primary cluster** (3 replicas, ``tests/cluster.py``)
   on hit-Redis and miss traffic: reads per second and p50/p99 at a fixed
   concurrency.

Usage: ``.venv/bin/python bench/bench_scale.py [--keys 5000000] [--upserts 300]``.
PostgreSQL comes from ``--postgres-dsn`` (a database is created and dropped).
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import percentile  # noqa: E402
from mcprouter.server import wiring  # noqa: E402
from mcprouter.server.cache import CachePolicy  # noqa: E402
from mcprouter.server.cache.topology import RedisClient  # noqa: E402
from mcprouter.server.keys import KeySpace  # noqa: E402
from mcprouter.server.postgres.pool import create_pool  # noqa: E402
from mcprouter.server.postgres.processor import PostgresPolicies, PostgresProcessor  # noqa: E402
from mcprouter.server.postgres.store import PostgresStore  # noqa: E402
from mcprouter.server.redis.connection import create_redis  # noqa: E402
from mcprouter.server.stats import CacheStats  # noqa: E402
from mcprouter.v1 import router_service_pb2 as rs  # noqa: E402
from mcprouter.v1.experiment_pb2 import Experiment, ExperimentStatus, Variant  # noqa: E402
from mcprouter.v1.serve_status_pb2 import DataType  # noqa: E402
from tests import backends  # noqa: E402
from tests.cluster import free_port, local_cluster, valkey_binary  # noqa: E402

EXPERIMENT = CachePolicy(DataType.DATA_TYPE_EXPERIMENT, fresh_ttl=3600, xfetch_beta=0.0)
DERIVED = CachePolicy(DataType.DATA_TYPE_ANALYTICS, fresh_ttl=3600, xfetch_beta=0.0)


def policies() -> PostgresPolicies:
    return PostgresPolicies(
        experiment=EXPERIMENT,
        assignment=CachePolicy(DataType.DATA_TYPE_ASSIGNMENT, fresh_ttl=3600, xfetch_beta=0.0),
        user_profile=CachePolicy(DataType.DATA_TYPE_USER_PROFILE, fresh_ttl=3600, xfetch_beta=0.0),
    )


def experiment(exp_id: str, version: int = 0) -> Experiment:
    return Experiment(
        experiment_id=exp_id,
        name=uuid.uuid4().hex[:8],
        version=version,
        status=ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
        variants=[Variant(name="control", weight=1), Variant(name="treatment", weight=1)],
    )


async def constant(value: Experiment) -> Experiment:
    return value


def summary(label: str, latencies: list[float], elapsed: float) -> str:
    ordered = sorted(latencies)
    return (
        f"{label:<34} {len(ordered) / elapsed:>9.0f}/s  p50 {percentile(ordered, 50):>7.2f} ms"
        f"  p99 {percentile(ordered, 99):>7.2f} ms"
    )


async def upserts(redis: RedisClient, dsn: str, count: int) -> tuple[list[float], float]:
    """Upsert ``count`` times, each after caching 4 derived entries of the experiment."""
    space = KeySpace(f"bench-{uuid.uuid4().hex[:6]}:")
    core = wiring.cache_core(redis, space, CacheStats(), redis_timeout_s=5.0)
    pool = await create_pool(dsn, min_size=1, max_size=4)
    processor = PostgresProcessor(PostgresStore(pool), core.cache, policies())
    exp_id = f"bx-{uuid.uuid4().hex[:8]}"
    value = Experiment(experiment_id=exp_id)
    version = 0
    latencies = []
    try:
        stored = await processor.upsert_experiment(
            rs.UpsertExperimentOperation(experiment=experiment(exp_id))
        )
        version = stored.value.version  # type: ignore[attr-defined]
        for n in range(count):
            for h in range(4):
                key = f"metrics:{exp_id}:control:clicks:20261129{h:02d}"
                await core.cache.get_or_load(key, Experiment, lambda: constant(value), DERIVED)
            await core.cache.settle()
            started = time.perf_counter()
            stored = await processor.upsert_experiment(
                rs.UpsertExperimentOperation(experiment=experiment(exp_id, version))
            )
            latencies.append((time.perf_counter() - started) * 1000)
            version = stored.value.version  # type: ignore[attr-defined]
            del n
        scan_started = time.perf_counter()
        await core.cache.invalidate(patterns=[f"metrics:{exp_id}:*"])  # the RPC's SCAN walk
        scan_ms = (time.perf_counter() - scan_started) * 1000
    finally:
        await processor.aclose()
        await core.cache.aclose()
        await pool.close()
    return latencies, scan_ms


async def reads(redis: RedisClient, label: str, concurrency: int, seconds: float) -> list[str]:
    """Hit-Redis and miss throughput of the cache core on ``redis``."""
    space = KeySpace(f"bench-{uuid.uuid4().hex[:6]}:")
    core = wiring.cache_core(redis, space, CacheStats(), redis_timeout_s=5.0)
    lines = []
    try:
        keys = [f"experiment:hot-{i}" for i in range(1000)]
        value = Experiment(experiment_id="hot", name="x" * 64)

        async def load() -> Experiment:
            return value

        for key in keys:
            await core.cache.get_or_load(key, Experiment, load, EXPERIMENT)
        await core.cache.settle()
        for mode in ("hit-redis", "miss"):
            latencies: list[float] = []
            stop = time.perf_counter() + seconds
            counter = iter(range(10**9))

            async def worker(
                mode: str, stop: float, counter: Iterator[int], latencies: list[float]
            ) -> None:
                while time.perf_counter() < stop:
                    n = next(counter)
                    key = keys[n % len(keys)] if mode == "hit-redis" else f"experiment:m-{n}"
                    started = time.perf_counter()
                    await core.cache.get_or_load(key, Experiment, load, EXPERIMENT)
                    latencies.append((time.perf_counter() - started) * 1000)

            began = time.perf_counter()
            await asyncio.gather(
                *(worker(mode, stop, counter, latencies) for _ in range(concurrency))
            )
            lines.append(
                summary(f"{label} {mode} c={concurrency}", latencies, time.perf_counter() - began)
            )
            await core.cache.settle()
    finally:
        await core.cache.aclose()
    return lines


def private_valkey(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port(set())
    process = subprocess.Popen(
        [valkey_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder), "--enable-debug-command", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return process, port


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=5_000_000, help="unrelated keys for table 1")
    parser.add_argument("--upserts", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0, help="per read cell")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    dsn = await backends.create_database(args.postgres_dsn)
    try:
        import asyncpg

        from mcprouter.server.postgres.migrations import apply_migrations

        conn = await asyncpg.connect(dsn)
        await apply_migrations(conn)
        await conn.close()
        with tempfile.TemporaryDirectory() as folder:
            process, port = private_valkey(Path(folder))
            try:
                redis = create_redis(
                    f"redis://127.0.0.1:{port}/0", pool_size=64, timeout_s=5, pool_timeout_s=5
                )
                for _ in range(100):
                    try:
                        await redis.ping()
                        break
                    except Exception:
                        await asyncio.sleep(0.05)
                print(f"== 1. experiment upsert latency, {args.upserts} upserts, each invalidating "
                      "its experiment key and 4 derived entries through the index")  # fmt: skip
                empty, scan_empty = await upserts(redis, dsn, args.upserts)
                print(f"   populating {args.keys:,} unrelated keys (DEBUG POPULATE)...", flush=True)
                await redis.execute_command("DEBUG", "POPULATE", args.keys, "_dedup:{u}", 16)
                size = await redis.dbsize()
                full, scan_full = await upserts(redis, dsn, args.upserts)
                e50, f50 = percentile(sorted(empty), 50), percentile(sorted(full), 50)
                e99, f99 = percentile(sorted(empty), 99), percentile(sorted(full), 99)
                print(
                    f"   {'keys in Redis':<24} {'p50 ms':>8} {'p99 ms':>8} {'SCAN pattern ms':>16}"
                )
                print(f"   {'~0':<24} {e50:>8.2f} {e99:>8.2f} {scan_empty:>16.1f}")
                print(f"   {size:<24,} {f50:>8.2f} {f99:>8.2f} {scan_full:>16.1f}")
                scan_ratio = scan_full / max(scan_empty, 0.001)
                print(f"   ratio (with / without): p50 {f50 / e50:.2f}, p99 {f99 / e99:.2f}; "
                      f"the SCAN-based removal {scan_ratio:.0f}x")  # fmt: skip
                await redis.aclose()
            finally:
                process.terminate()
                process.wait(timeout=10)
            print(f"== 2. single Redis vs 3-primary cluster, in-process cache core, L1 off, "
                  f"{args.seconds:g} s per cell")  # fmt: skip
            process, port = private_valkey(Path(folder))
            try:
                single = create_redis(
                    f"redis://127.0.0.1:{port}/0", pool_size=64, timeout_s=5, pool_timeout_s=5
                )
                await asyncio.sleep(0.3)
                for line in await reads(single, "single", args.concurrency, args.seconds):
                    print("  ", line)
                await single.aclose()
            finally:
                process.terminate()
                process.wait(timeout=10)
            with local_cluster(Path(folder) / "cluster") as cluster:
                clustered = create_redis(
                    cluster.url.replace("redis://", "redis+cluster://"),
                    pool_size=64, timeout_s=5, pool_timeout_s=5,
                )  # fmt: skip
                for line in await reads(clustered, "cluster", args.concurrency, args.seconds):
                    print("  ", line)
                await clustered.aclose()
    finally:
        await backends.drop_database(args.postgres_dsn, dsn)


if __name__ == "__main__":
    asyncio.run(main())
