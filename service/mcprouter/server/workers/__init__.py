"""``mcp-router serve --workers N``: every core of one machine.

One Python process runs one event loop on one core, so a machine's other
cores need other processes. With ``WORKERS`` above 1 the ``serve`` command
becomes a *supervisor* (``supervisor``) that

1. starts what must exist once per machine (``shared``): the embedded Valkey
   and PostgreSQL (migrated once), a ``chroma run`` server instead of one
   embedded Chroma per process, and the *ClickHouse host*, the one process
   that owns the embedded chDB engine (``clickhouse/host.py``);
2. forks the workers before any gRPC object exists in it (grpc's
   multiprocessing pattern); each worker runs today's single-process server,
   bound to the same port with ``SO_REUSEPORT`` so the kernel spreads
   *connections* among them;
3. restarts a process that dies (with backoff), serves one ``/metrics`` that
   merges every worker's registry (``metrics``), and on SIGTERM/SIGINT drains
   every worker (health NOT_SERVING, ``DRAIN_DELAY_S``, then
   ``SHUTDOWN_GRACE_S``), stops the shared backends and exits 0.

``WORKERS=1`` (the default) never imports this package: ``serve`` runs the
server in its own process exactly as before.
"""

from __future__ import annotations

import os


def resolve_workers(value: int | str) -> int:
    """How many workers ``value`` (a count or ``auto``) means on this machine.

    ``auto`` is the cores this process may run on (its CPU affinity, which
    containers and ``taskset`` narrow), not the machine's core count.
    """
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)
    count = int(value)
    if count < 1:
        raise ValueError(f"workers must be 'auto' or at least 1, got {value!r}")
    return count
