"""``mcp-router demo``: seed data and watch the cache work, through the Python SDK.

Outside the server package on purpose: it needs the client SDK, which the
server does not; ``cli.py`` imports it only when the ``demo`` command runs.

With ``--target host:port`` it talks to a running server. Without one it
starts the embedded default in this process (Valkey, PostgreSQL, chDB and
Chroma in a temporary folder, store URLs from the environment ignored, a free
port) and removes it afterwards. The steps are in ``demo_steps``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

from mcprouter.client import RouterClient, RouterError, TlsConfig
from mcprouter.demo.steps import Demo, Printer

EMBEDDED_START_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 30.0


async def run_demo(
    target: str | None,
    *,
    out: TextIO = sys.stdout,
    token: str | None = None,
    tls: TlsConfig | None = None,
) -> None:
    """Run every step against ``target`` (``host:port``), or an embedded server if ``None``.

    ``token`` and ``tls`` are passed to ``RouterClient.connect`` (for a
    server with AUTH_TOKENS / TLS_CERT_FILE); the embedded server uses neither.

    Example:
        >>> await run_demo("localhost:50051", out=io.StringIO())
    """
    printer = Printer(out)
    async with contextlib.AsyncExitStack() as stack:
        if target is None:
            printer.line("Starting the embedded default (Valkey, PostgreSQL, chDB, Chroma)...")
            target = await stack.enter_async_context(embedded_server())
        client = await stack.enter_async_context(
            RouterClient.connect(target, token=token, tls=tls, default_timeout=CALL_TIMEOUT_S)
        )
        await client.wait_until_ready(timeout=10.0)
        printer.line(f"mcp-router demo against {target} (health: {await client.health()})")
        demo = Demo(client, printer)
        printer.line(f"run {demo.run}: every id of this run ends in -{demo.run}")
        before = await client.stats()
        await demo.seed()
        keys = await demo.fresh_then_cached()
        await demo.dedup_and_live_counters()
        await demo.peek(keys)
        await demo.invalidation()
        await demo.stats(before)
        printer.line()
        printer.line("Done. The README shows the same calls with grpcurl.")


@contextlib.asynccontextmanager
async def embedded_server() -> AsyncIterator[str]:
    """Serve the embedded default in this process on a free port; yield ``127.0.0.1:PORT``.

    The server is ``server.serve`` in a task, cancelled on exit (its
    ``finally`` stops the gRPC server, then ``open_app`` closes the stores).
    """
    from mcprouter.server.config import Settings
    from mcprouter.server.edge.server import serve

    with tempfile.TemporaryDirectory(prefix="mcp-router-demo-") as folder:
        settings = Settings(
            _env_file=None,
            listen_address="127.0.0.1:0",
            data_dir=Path(folder),
            redis_url=None,
            postgres_dsn=None,
            clickhouse_url=None,
            chroma_url=None,
            key_namespace="",
            auth_tokens=None,
            auth_tokens_file=None,
            tls_cert_file=None,
            tls_key_file=None,
            tls_client_ca_file=None,
            shutdown_grace_s=1.0,
        )
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        ports: list[int] = []

        def on_ready(port: int) -> None:
            ports.append(port)
            ready.set_result(None)

        server = asyncio.create_task(serve(settings, on_ready=on_ready))
        try:
            async with asyncio.timeout(EMBEDDED_START_TIMEOUT_S):
                await asyncio.wait({ready, server}, return_when=asyncio.FIRST_COMPLETED)
            if not ports:
                await server  # it ended during start-up: raise its error
                raise RuntimeError("the embedded server stopped during start-up")
            yield f"127.0.0.1:{ports[0]}"
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
            for sig in (signal.SIGTERM, signal.SIGINT):  # installed by serve()
                loop.remove_signal_handler(sig)


def main(target: str | None, *, token: str | None = None, tls_ca: str | None = None) -> int:
    """Run the demo; 0 on success, 1 with the error on stderr when a call failed."""
    # pgserver asks platformdirs for a runtime dir, which warns without XDG_RUNTIME_DIR.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        tls = TlsConfig(ca=tls_ca) if tls_ca is not None else None
        asyncio.run(run_demo(target, token=token, tls=tls))
    except RouterError as exc:
        print(f"mcp-router demo: {exc}", file=sys.stderr)
        return 1
    return 0
