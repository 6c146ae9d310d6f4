"""A TCP proxy that adds a fixed round-trip time, for a store that is "remote".

Every chunk read from one side is written to the other side RTT/2 after it
arrived, in order (one FIFO queue and one writer thread per direction, so a
chunk never overtakes an earlier one). The RTT can be changed while
connections are open; it applies to chunks arriving from then on.

It runs in a process of its own (``ProxyProcess`` starts it): in the bench
process, the load generator would hold the GIL and an asyncio timer has
millisecond resolution, either of which adds more than the half millisecond
being simulated. Threads with blocking sockets and ``time.sleep`` keep the
added delay within about 0.1 ms of the target on an idle core.

Command line (what ``ProxyProcess`` runs)::

    python bench/_proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT RTT_MS

It prints ``ready`` once listening, then reads commands on stdin: ``rtt MS``
(answered ``ok``) and ``quit``. EOF on stdin also stops it, so it never
outlives the bench.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

CHUNK = 65_536


class DelayProxy:
    """Listen on 127.0.0.1:``port``; forward to ``target`` with ``rtt_ms`` added."""

    def __init__(self, port: int, target: tuple[str, int], rtt_ms: float) -> None:
        self._target = target
        self.one_way_s = rtt_ms / 2000
        self._listener = socket.create_server(("127.0.0.1", port), backlog=256)
        self.port = int(self._listener.getsockname()[1])

    def serve_forever(self) -> None:
        """Accept connections until the listener is closed."""
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def close(self) -> None:
        """Stop accepting (open connections die with the process)."""
        self._listener.close()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for src, dst in ((client, upstream), (upstream, client)):
            chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
            threading.Thread(target=self._read, args=(src, chunks), daemon=True).start()
            threading.Thread(target=self._write, args=(dst, chunks), daemon=True).start()

    def _read(self, src: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes]]) -> None:
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                data = b""
            chunks.put((time.perf_counter() + self.one_way_s, data))
            if not data:
                return

    @staticmethod
    def _write(dst: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes]]) -> None:
        while True:
            due, data = chunks.get()
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return


class ProxyProcess:
    """The proxy as a subprocess of the bench: start, change the RTT, stop."""

    def __init__(self, target: tuple[str, int], rtt_ms: float, port: int) -> None:
        argv = [sys.executable, str(Path(__file__)), str(port), target[0], str(target[1])]
        self.port = port
        self.rtt_ms = rtt_ms
        self._process = subprocess.Popen(
            [*argv, str(rtt_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        if self._readline() != "ready":
            raise RuntimeError("the delaying proxy did not start")

    def _readline(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def set_rtt(self, rtt_ms: float) -> None:
        """Add ``rtt_ms`` to every round trip from now on."""
        assert self._process.stdin is not None
        self._process.stdin.write(f"rtt {rtt_ms}\n")
        self._process.stdin.flush()
        if self._readline() != "ok":
            raise RuntimeError("the delaying proxy did not take the new RTT")
        self.rtt_ms = rtt_ms

    def stop(self) -> None:
        """Ask it to quit; kill it if it does not. Safe to call twice."""
        if self._process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            assert self._process.stdin is not None
            self._process.stdin.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)


def main(argv: list[str]) -> None:
    """``LISTEN_PORT TARGET_HOST TARGET_PORT RTT_MS``; commands on stdin."""
    proxy = DelayProxy(int(argv[0]), (argv[1], int(argv[2])), float(argv[3]))
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["rtt"]:
            proxy.one_way_s = float(words[1]) / 2000
            print("ok", flush=True)
        elif words[:1] == ["quit"]:
            break
    proxy.close()


if __name__ == "__main__":
    main(sys.argv[1:])
