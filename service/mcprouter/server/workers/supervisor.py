"""The supervisor of ``serve --workers N``: fork, watch, restart, drain.

It runs a plain asyncio loop that creates no gRPC object and keeps no thread
alive (``shared.OneShotThreads``), so every fork copies a process with one
thread and no gRPC state, as grpc's multiprocessing example requires. Each
child is a ``Slot``: the ClickHouse host (when the embedded engine is used)
and the N workers. A child reports *ready* through a pipe (a worker once its
server listens); the supervisor watches each child's exit through its
sentinel and restarts one that died, after a backoff that doubles with each
quick failure (0.5 s up to 30 s, reset after a minute of life).

Ports are reserved before any worker starts, as in grpc's example: the
supervisor binds (without listening) each listening address with
``SO_REUSEPORT``, which also turns a ``:0`` port into a real one all workers
share. A start-up failure (a child that exits before it ever was ready)
stops everything with exit status 1; after that, failures are restarts.

Signals: SIGTERM or SIGINT start the shutdown. Workers get SIGTERM and drain
as a single server does (health NOT_SERVING, ``DRAIN_DELAY_S``, then
``SHUTDOWN_GRACE_S`` for calls in flight); one still alive after that plus a
margin is killed. Then the ClickHouse host stops, then the shared backends;
the supervisor exits 0. Children are started in their own process group when
they must outlive a terminal's Ctrl-C (the host), and every child asks the
kernel for SIGTERM should the supervisor itself die (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path

from mcprouter.server.config import Settings
from mcprouter.server.workers.shared import (
    OneShotThreads,
    SharedBackends,
    open_shared_backends,
)

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0
KILL_MARGIN_S = 10.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}

Target = Callable[[Callable[[], None]], None]
"""What a child runs; it calls its argument once it is ready."""


@dataclass
class Slot:
    """One supervised child, restarted as a new process when it dies."""

    name: str
    target: Target
    own_group: bool = False
    process: BaseProcess | None = None
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    ever_ready: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        """The running process's id."""
        return None if self.process is None else self.process.pid


def _listen_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


@contextlib.contextmanager
def reserve_port(address: str) -> Iterator[str]:
    """Hold ``address``'s port with SO_REUSEPORT (bound, not listening); yield ``host:port``.

    The workers then bind the same port (grpc sets SO_REUSEPORT too), and a
    ``:0`` port is resolved once, here, for all of them.
    """
    host, port = _listen_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lookup = "127.0.0.1" if host == "localhost" else host
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((lookup, port))
        bound = int(sock.getsockname()[1])
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        yield f"{shown}:{bound}"
    finally:
        sock.close()


def _child_main(target: Target, ready_w: int, own_group: bool) -> None:
    """First code of a forked child: a clean signal state, then ``target``."""
    # The parent's loop routed signals to its own wakeup fd: not ours.
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    if own_group:
        os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG: die with the supervisor
    signal.pthread_sigmask(signal.SIG_SETMASK, set())

    def ready() -> None:
        with contextlib.suppress(OSError):
            os.write(ready_w, b"r")
            os.close(ready_w)

    target(ready)


class Supervisor:
    """Runs the shared backends and N workers until a signal; see the module doc."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self._settings = settings
        self._count = workers
        self._stopping = asyncio.Event()
        self._slots: list[Slot] = []
        self._host: Slot | None = None
        self._startup_failed = False

    @property
    def workers(self) -> list[Slot]:
        """The worker slots (not the ClickHouse host)."""
        return [s for s in self._slots if s is not self._host]

    def _spawn(self, slot: Slot) -> None:
        if self._stopping.is_set():
            return
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        context = multiprocessing.get_context("fork")
        process = context.Process(
            target=_child_main, args=(slot.target, write_fd, slot.own_group), name=slot.name
        )
        if threading_count() > 1:
            log.warning("forking %s with %d threads alive", slot.name, threading_count())
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.close(write_fd)
        slot.process = process
        slot.started_at = time.monotonic()
        slot.ready.clear()
        slot.exited.clear()
        loop.add_reader(read_fd, self._on_ready, slot, read_fd)
        loop.add_reader(process.sentinel, self._on_exit, slot, process)
        log.info("%s started (pid %d)", slot.name, process.pid)

    def _on_ready(self, slot: Slot, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(read_fd)
        try:
            got = os.read(read_fd, 1)
        except OSError:
            got = b""
        os.close(read_fd)
        if got:
            slot.ready.set()
            slot.ever_ready = True

    def _on_exit(self, slot: Slot, process: BaseProcess) -> None:
        asyncio.get_running_loop().remove_reader(process.sentinel)
        # The sentinel turns readable as the child exits, a moment before it
        # can be reaped: this join is that moment, not a wait.
        process.join(5)
        code = process.exitcode
        lived = time.monotonic() - slot.started_at
        slot.exited.set()
        if self._stopping.is_set():
            log.info("%s (pid %s) exited with %s", slot.name, process.pid, code)
            return
        if not slot.ever_ready:
            log.error("%s (pid %s) exited with %s during start-up", slot.name, process.pid, code)
            self._startup_failed = True
            self._stopping.set()
            return
        slot.failures = 0 if lived > HEALTHY_AFTER_S else slot.failures + 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(slot.failures - 1, 0))
        slot.restarts += 1
        log.warning(
            "%s (pid %s) died with exit code %s after %.1fs; restarting in %.1fs (restart %d)",
            slot.name, process.pid, code, lived, delay, slot.restarts,
        )  # fmt: skip
        asyncio.get_running_loop().call_later(delay, self._spawn, slot)

    async def _wait_ready(self, slots: list[Slot]) -> bool:
        """True once every slot is ready; False when start-up failed or a stop came."""
        waiting: asyncio.Future[object] = asyncio.ensure_future(self._wait_all(slots))
        stop: asyncio.Future[object] = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {waiting, stop}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
            if not waiting.done():
                waiting.cancel()
        if waiting not in done:
            if not self._stopping.is_set():
                log.error("children not ready within %.0fs", READY_TIMEOUT_S)
                self._startup_failed = True
            return False
        return True

    @staticmethod
    async def _wait_all(slots: list[Slot]) -> None:
        for slot in slots:
            await slot.ready.wait()

    async def _terminate(self, slots: list[Slot], timeout_s: float) -> None:
        """SIGTERM each running child, wait up to ``timeout_s``, then SIGKILL."""
        running = [s for s in slots if s.process is not None and s.process.exitcode is None]
        for slot in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid, signal.SIGTERM)  # type: ignore[union-attr, arg-type]
        waits = [asyncio.ensure_future(s.exited.wait()) for s in running]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout_s)
            for future in pending:
                future.cancel()
        for slot in running:
            process = slot.process
            assert process is not None
            if process.exitcode is None and not slot.exited.is_set():
                log.warning("%s (pid %s) did not stop in %.0fs: killed", slot.name, process.pid,
                            timeout_s)  # fmt: skip
                process.kill()
                await asyncio.to_thread(process.join, 5)

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status (0 after a clean drain)."""
        loop = asyncio.get_running_loop()
        loop.set_default_executor(OneShotThreads())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        settings = self._settings
        run_dir = Path(tempfile.mkdtemp(prefix="mcprouter-"))  # 0700: the sockets' home
        try:
            with contextlib.ExitStack() as ports:
                # First, so a port in use fails at once, before anything starts.
                addresses: dict[str, str] = {}
                for name in ("listen_address", "health_listen_address"):
                    wanted = getattr(settings, name)
                    if not wanted:
                        continue
                    try:
                        addresses[name] = ports.enter_context(reserve_port(wanted))
                    except OSError as exc:
                        log.error("cannot listen on %s (%s): %s", wanted, name.upper(), exc)
                        return 1
                async with open_shared_backends(settings) as shared:
                    if self._stopping.is_set():
                        return 0
                    try:
                        return await self._run_children(shared, addresses, run_dir)
                    except BaseException:
                        await self._shutdown()  # no worker outlives a failed supervisor
                        raise
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
            log.info("supervisor stopped")

    def _request_stop(self, sig: signal.Signals) -> None:
        if not self._stopping.is_set():
            log.info("%s: stopping every worker (drain)", sig.name)
        self._stopping.set()

    async def _run_children(
        self, shared: SharedBackends, addresses: dict[str, str], run_dir: Path
    ) -> int:
        from mcprouter.server.workers.children import clickhouse_host_target, worker_target
        from mcprouter.server.workers.metrics import open_fleet_metrics

        settings = self._settings
        update = dict(addresses)
        if shared.clickhouse_data is not None:
            socket_path = run_dir / "clickhouse.sock"
            update["clickhouse_url"] = f"unix://{socket_path}"
            self._host = Slot(
                "clickhouse-host",
                clickhouse_host_target(socket_path, shared.clickhouse_data),
                own_group=True,
            )
            self._slots.append(self._host)
            self._spawn(self._host)
            if not await self._wait_ready([self._host]):
                return await self._shutdown()
        worker_settings = shared.worker_settings.model_copy(update=update)
        metrics_sockets = []
        for index in range(self._count):
            metrics_socket = None
            if settings.metrics_address:
                metrics_socket = run_dir / f"metrics-{index}.sock"
            metrics_sockets.append(metrics_socket)
            slot = Slot(f"worker-{index}", worker_target(worker_settings, index, metrics_socket))
            self._slots.append(slot)
            self._spawn(slot)
        if not await self._wait_ready(self.workers):
            return await self._shutdown()
        async with open_fleet_metrics(settings.metrics_address, self.workers, metrics_sockets):
            log.info(
                "mcp-router supervisor (pid %d): %d workers serving on %s",
                os.getpid(), self._count, update["listen_address"],
            )  # fmt: skip
            await self._stopping.wait()
            return await self._shutdown()

    async def _shutdown(self) -> int:
        self._stopping.set()
        s = self._settings
        await self._terminate(self.workers, s.drain_delay_s + s.shutdown_grace_s + KILL_MARGIN_S)
        if self._host is not None:
            await self._terminate([self._host], KILL_MARGIN_S + 5)
        return 1 if self._startup_failed else 0


def threading_count() -> int:
    """Threads alive in this process."""
    import threading

    return threading.active_count()


def run_supervisor(settings: Settings, workers: int) -> int:
    """Run the supervisor on a plain asyncio loop; its exit status."""
    return asyncio.run(Supervisor(settings, workers).run())
