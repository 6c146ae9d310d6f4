"""The ``mcp-router`` console script."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from mcprouter.server.config import Settings, describe_settings


def _settings_epilog() -> str:
    rows = describe_settings()
    width = max(len(name) for name, _, _ in rows)
    lines = ["configuration (environment variables, or a .env file in the working directory):"]
    for name, default, description in rows:
        lines.append(f"  {name:<{width}}  {description} [default: {default}]")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-router",
        description="gRPC data router for an experimentation platform.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server. Store URLs left unset start embedded servers.",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--env-file", help="read settings from this file instead of ./.env")
    serve.add_argument(
        "--workers",
        default=None,
        metavar="N|auto",
        help="server processes on this machine (overrides WORKERS; 'auto': one per core "
        "available); above 1 a supervisor forks them onto the one port [default: $WORKERS or 1]",
    )
    migrate = commands.add_parser(
        "migrate",
        help="apply pending PostgreSQL and ClickHouse migrations and exit",
        description="Apply pending migrations to POSTGRES_DSN and CLICKHOUSE_URL (or the "
        "embedded servers).",
    )
    migrate.add_argument("--env-file", help="read settings from this file instead of ./.env")
    health = commands.add_parser(
        "health",
        help="ask a running server's gRPC health service; exit 0 when SERVING",
        description="Probe a server with grpc.health.v1 Check (for container healthchecks).",
    )
    health.add_argument("--address", default="localhost:50051", help="host:port of the server")
    health.add_argument("--service", default="", help="service name; '' is overall health")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    demo = commands.add_parser(
        "demo",
        help="seed data and show each data type served FRESH, then CACHED",
        description="Seed experiments, users, events and embeddings through the Python SDK, "
        "then show FRESH/CACHED reads with latencies, event dedup, invalidation and Stats. "
        "Without --target it starts the embedded default in-process (temporary folder).",
    )
    # The demo's own options, here so that no command but ``demo`` imports the
    # demo or the client SDK it runs on.
    demo.add_argument(
        "--target",
        default=None,
        metavar="HOST:PORT",
        help="a running server; omitted: start the embedded default in this process",
    )
    demo.add_argument(
        "--token",
        default=os.environ.get("MCPROUTER_TOKEN"),
        help="bearer token for a server with AUTH_TOKENS [default: $MCPROUTER_TOKEN]",
    )
    demo.add_argument(
        "--tls-ca",
        default=None,
        metavar="PEM",
        help="connect with TLS, verifying the server against this CA file",
    )
    _cache_parser(commands)
    return parser


def _cache_parser(commands: Any) -> None:
    cache = commands.add_parser(
        "cache",
        help="look inside the cache: get, ttl, scan, stats (read-only, any Redis)",
        description="Decode cached values (the CacheEnvelope and its typed payload) to JSON, "
        "show TTLs and freshness, scan a key family (SCAN, bounded by --limit), and count "
        "keys per family. Keys are given as clients see them; --namespace is added in front.",
    )
    cache.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="redis://host:port/db [default: $REDIS_URL]",
    )
    cache.add_argument(
        "--namespace",
        default=os.environ.get("KEY_NAMESPACE", ""),
        help="the server's KEY_NAMESPACE, e.g. 'prod:' [default: $KEY_NAMESPACE]",
    )
    actions = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    get = actions.add_parser("get", help="envelope, TTL, freshness and decoded value of keys")
    get.add_argument("keys", nargs="+", metavar="KEY", help="e.g. experiment:checkout-v2")
    ttl = actions.add_parser("ttl", help="TTL and fresh/stale state of keys")
    ttl.add_argument("keys", nargs="+", metavar="KEY")
    scan = actions.add_parser("scan", help="list keys of one family or pattern (SCAN)")
    scan.add_argument(
        "keys",
        nargs=1,
        metavar="FAMILY_OR_PATTERN",
        help="experiment, metrics:checkout-v2:*, _dedup, ...",
    )
    scan.add_argument("--limit", type=int, default=100, help="stop after this many keys")
    stats = actions.add_parser("stats", help="Redis memory, key count, keys per family")
    stats.add_argument("--limit", type=int, default=100_000, help="keys scanned at most")
    stats.set_defaults(keys=[])


def _cache(args: argparse.Namespace) -> int:
    from mcprouter.server import inspector

    if not args.redis_url:
        print("mcp-router cache: set --redis-url or REDIS_URL", file=sys.stderr)
        return 2
    try:
        return inspector.run(
            args.cache_command,
            args.keys,
            url=args.redis_url,
            namespace=args.namespace,
            limit=getattr(args, "limit", 100),
        )
    except ValueError as exc:
        print(f"mcp-router cache: {exc}", file=sys.stderr)
        return 2


def _health(address: str, service: str, timeout: float) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            print(f"{address} {service or '(overall)'}: {exc.code().name}", file=sys.stderr)
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{address} {service or '(overall)'}: {name}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


async def _migrate(settings: Settings) -> None:
    from contextlib import AsyncExitStack

    from mcprouter.server.app import migrate, open_postgres
    from mcprouter.server.clickhouse.store import embedded_clickhouse_url, open_clickhouse

    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(open_postgres(settings, stack))
        applied = await migrate(pool)
        print(f"PostgreSQL: applied {len(applied)}: {', '.join(applied) or 'none pending'}")
        clickhouse = await open_clickhouse(
            settings.clickhouse_url or embedded_clickhouse_url(settings.data_dir)
        )
        try:
            applied = await clickhouse.migrate()
        finally:
            await clickhouse.close()
        print(f"ClickHouse: applied {len(applied)}: {', '.join(applied) or 'none pending'}")


def _load_settings(env_file: str | None) -> Settings:
    try:
        if env_file is not None:
            return Settings(_env_file=env_file)
        return Settings()
    except ValidationError as exc:
        sys.exit(f"mcp-router: invalid configuration:\n{exc}")


def _workers(option: str | None, settings: Settings) -> int:
    """The worker count of ``serve``: ``--workers``, else ``WORKERS`` (``auto`` resolved)."""
    from mcprouter.server.workers import resolve_workers

    value: int | str = settings.workers if option is None else option
    try:
        return resolve_workers(value if value == "auto" else int(value))
    except ValueError as exc:
        sys.exit(f"mcp-router serve: --workers: {exc}")


def _run(coro_factory: object) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
        runner = asyncio.Runner()
    with runner:
        runner.run(coro_factory)  # type: ignore[arg-type]


def _configure_logging(settings: Settings) -> object:
    """Set up logging; returns what must stay alive while the process logs."""
    from mcprouter.server.observability.logs import configure_logging
    from mcprouter.server.observability.tracing import trace_fields

    context = trace_fields if settings.otel_enabled else None
    keep: object = None
    stream = sys.stderr
    if settings.log_format == "json":
        from mcprouter.server.observability.stderr import json_stderr

        keep = redirected = json_stderr()
        stream = redirected.stream
    configure_logging(settings.log_level, settings.log_format, stream=stream, context=context)
    return keep


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script."""
    # gRPC's C core reads this once, when grpc is first imported (nothing above
    # imports it): INFO lines from the core are noise in a service's log.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args = _parser().parse_args(argv)
    if args.command == "health":
        sys.exit(_health(args.address, args.service, args.timeout))
    if args.command == "cache":
        sys.exit(_cache(args))
    if args.command == "demo":
        try:
            from mcprouter.demo import main as demo_main
        except ModuleNotFoundError as exc:  # the image ships the server only
            sys.exit(f"mcp-router demo needs the client SDK (mcprouter.client): {exc}")
        sys.exit(demo_main(args.target, token=args.token, tls_ca=args.tls_ca))
    settings = _load_settings(args.env_file)
    _logging = _configure_logging(settings)  # held until main returns
    # pgserver logs every command it runs at INFO; keep its warnings only.
    logging.getLogger("pgserver").setLevel(max(logging.WARNING, logging.getLogger().level))
    # httpx logs every request at INFO: each Chroma server call (a health probe
    # every HEALTH_PROBE_INTERVAL_S per process) would be a line.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.command == "serve":
        os.makedirs(settings.data_dir, exist_ok=True)
        workers = _workers(args.workers, settings)
        if workers > 1:
            from mcprouter.server.workers.supervisor import run_supervisor

            sys.exit(run_supervisor(settings, workers))
        from mcprouter.server.edge.server import serve

        _run(serve(settings))
    elif args.command == "migrate":
        os.makedirs(settings.data_dir, exist_ok=True)
        _run(_migrate(settings))


if __name__ == "__main__":  # pragma: no cover
    main()
