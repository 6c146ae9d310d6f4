"""What a worker of ``serve --workers N`` knows about its place in the group."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """One worker's index and where it serves its metrics to the supervisor."""

    index: int
    metrics_socket: Path | None = None
    """Unix socket of this worker's ``/metrics`` (the supervisor merges them); ``None``: off."""
