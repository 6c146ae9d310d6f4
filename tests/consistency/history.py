"""The history of a run: every operation with its times, outcome and observed values.

An ``Op`` is one RPC (or one checker action, e.g. a health probe) as the
client saw it: invoked and completed on the checker's monotonic clock, the
gRPC code it ended with, and what it told the checker about the state of
each entity it touched (``Observation``). The checks read nothing else.

Entities are named ``exp:{id}``, ``user:{id}``, ``item:{id}`` (one embedding)
and ``assign:{experiment}:{user}``. Their state is an integer that grows with
every write: the ``version`` of experiments and profiles (0: does not exist),
the write counter ``seq`` carried in an embedding's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# read: a value served (RouteData or a GetCached hit); ack: a write answered
# STORED; abort: a version conflict, whose metadata names the store's version.
ObservationKind = Literal["read", "ack", "abort"]


@dataclass(frozen=True, slots=True)
class Observation:
    """What one op said about one entity."""

    entity: str
    state: int
    kind: ObservationKind
    token: str = ""  # identifies the write that produced ``state`` (content check)
    source: str = ""  # "CACHED", "FRESH", "STALE", "get_cached", ...


@dataclass(slots=True)
class Op:
    """One operation of the history."""

    op_id: int
    client: int
    instance: str  # "i0", or "-" for checker actions that target no instance
    incarnation: int
    kind: str
    entity: str
    input: dict[str, Any]
    invoke: float
    phase: str
    complete: float = 0.0
    code: str = ""
    status: str = ""  # the response's ServeStatus, for RouteData
    detail: str = ""  # error message, reason or a short description of the value
    cancelled_by_client: bool = False
    deadline_s: float = 0.0
    observations: list[Observation] = field(default_factory=list)
    event_outcomes: dict[str, str] = field(default_factory=dict)  # event id -> STORED/DUPLICATE

    @property
    def node(self) -> str:
        """The instance incarnation (a restarted process remembers nothing)."""
        return f"{self.instance}#{self.incarnation}"

    def describe(self, t0: float, event: str = "") -> str:
        """One line of evidence, times in ms since the start of the run.

        ``event``: for a batch of events, show only that event's outcome.
        """
        values = ", ".join(
            f"{o.entity}={o.state}{'/' + o.token if o.token else ''}({o.kind}"
            f"{' ' + o.source if o.source else ''})"
            for o in self.observations
        )
        flags = " client-cancelled" if self.cancelled_by_client else ""
        invoke, complete = (self.invoke - t0) * 1000, (self.complete - t0) * 1000
        shown = dict(self.input)
        if isinstance(events := shown.get("events"), list) and len(events) > 3:
            shown["events"] = f"{len(events)} ids: {', '.join(events[:3])}, ..."
        if event:
            values = f"{event}: {self.event_outcomes.get(event, 'no answer')}"
        return (
            f"op#{self.op_id} c{self.client} {self.node} {self.kind} {self.entity} "
            f"in={shown} [{invoke:.1f} .. {complete:.1f} ms]"
            f" -> {self.code}{' ' + self.status if self.status else ''}{flags}"
            f"{' {' + values + '}' if values else ''}{' ' + self.detail if self.detail else ''}"
        )


class History:
    """Append-only list of ops with the run's clock origin."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.ops: list[Op] = []

    def new(self, **fields: Any) -> Op:
        op = Op(op_id=len(self.ops), **fields)
        self.ops.append(op)
        return op


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken invariant, with the minimal evidence that shows it."""

    kind: str
    phase: str
    message: str
    evidence: tuple[str, ...] = ()
