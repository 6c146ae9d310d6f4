"""A real ``chroma run`` server for tests: free port, logs to a file, bounded start-up."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chroma_executable() -> str:
    return str(Path(sys.executable).with_name("chroma"))


class ChromaServer:
    """One ``chroma run`` process; ``stop()`` is an outage, ``restart()`` its end.

    ``port`` is a free port by default; a test that dialled an address before
    any server existed passes that address's port.
    """

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "chroma.log"
        folder.mkdir(parents=True, exist_ok=True)
        self._start()

    @property
    def pid(self) -> int:
        """The running process (for SIGSTOP / SIGCONT)."""
        return self._process.pid

    def _start(self) -> None:
        self._log = self.log_path.open("ab")
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
        self._process = subprocess.Popen(
            [
                chroma_executable(),
                "run",
                "--path",
                str(self.folder / "data"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def restart(self) -> None:
        """Start again on the same port and data folder (after ``stop()``)."""
        self.stop()
        self._start()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"chroma run exited with {self._process.returncode}; see {self.log_path}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1) as reply,
            ):
                if reply.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"chroma run not ready in {START_TIMEOUT_S} s; see {self.log_path}")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._log.close()


@contextlib.contextmanager
def chroma_server(folder: Path, port: int | None = None) -> Iterator[ChromaServer]:
    """A running server, stopped on exit whatever happened."""
    server = ChromaServer(folder, port)
    try:
        yield server
    finally:
        server.stop()
