"""The invariants, checked mechanically over the recorded history.

1. Read-your-writes: a read on instance incarnation N invoked after N
   acknowledged a write of entity e returns e at a state at least as new.
   (A restarted process is a new incarnation: it remembers nothing.)
2. Bounded staleness: a read invoked more than the bound after a newer state
   became known returns at least that state. A state becomes known when a
   write producing it was acknowledged; a state no acknowledged write
   produced (a write whose RPC failed, timed out or was cancelled, but
   committed) becomes known when an answer first reveals it (a read of it, or
   a conflict's ``current_version``) -- a committed write must be followed by
   its invalidation whatever happened to its RPC. The bound is ``bound_s``,
   or ``fault_bound_s`` for reads invoked during a fault or its grace window.
   Staleness of a read = its invoke time minus the time the first state newer
   than the one it returned became known (0 if none).
   Embedding items have no store-side version: a write that was never
   acknowledged may land late and overwrite a newer one, so a read returning
   the ``seq`` of such a write is not held to either rule. (An acknowledged
   seq can never come back once a newer one was seen: one writer per item at
   a time, and a write is applied before it is acknowledged.)
3. Content: a read of version v carries the token of the write that made v;
   assignments never move.
4. Events: every event answered STORED or DUPLICATE is in the union of the
   instances' ClickHouse exactly once; no event is there twice; nothing is
   there that was never sent.
5. Every answer is actionable: only the codes in ``allowed_codes``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tests.consistency.convergence import Convergence
from tests.consistency.faults import Window
from tests.consistency.history import History, Observation, Op, Violation

READ_KINDS = {"get_experiment", "get_profile", "get_assignment", "search", "get_cached"}
VERSIONED_WRITES = {"upsert_experiment", "upsert_profile"}
ALWAYS_ALLOWED = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}


@dataclass(frozen=True)
class Bounds:
    bound_s: float
    fault_bound_s: float


@dataclass
class Known:
    """The moment a state of an entity became known to the checker."""

    time: float
    state: int
    op: Op
    how: str  # "acknowledged" or "observed"


@dataclass
class ReadCheck:
    """Staleness figures: phase -> worst ms in fault/grace windows and outside them."""

    worst: dict[str, dict[str, float]] = field(default_factory=dict)
    reads: int = 0

    def note(self, phase: str, faulty: bool, staleness_s: float) -> None:
        row = self.worst.setdefault(phase, {})
        key = "fault" if faulty else "steady"
        row[key] = max(row.get(key, 0.0), staleness_s * 1000)


def allowed_codes(op: Op, graceful_stops: Mapping[str, float] | None = None) -> set[str]:
    """The codes an op may end with; ``graceful_stops``: node -> when SIGTERM was sent.

    A server that stops accepting cancels the calls its transport had
    received but its event loop had not yet taken (gRPC zombifies them): the
    client gets CANCELLED for a call that never started. Deployments avoid
    it with the drain (health NOT_SERVING first); the checker's clients
    ignore health, so on a node being stopped gracefully CANCELLED is allowed.
    """
    allowed = set(ALWAYS_ALLOWED)
    stopped_at = (graceful_stops or {}).get(op.node)
    if op.cancelled_by_client or (stopped_at is not None and op.complete >= stopped_at):
        allowed.add("CANCELLED")
    if op.kind in VERSIONED_WRITES or op.kind == "get_assignment":
        allowed.add("ABORTED")  # version conflict / assignment race
    if op.kind in READ_KINDS - {"get_cached"}:
        allowed.add("NOT_FOUND")  # an entity not created yet
    return allowed


def check_codes(
    history: History, graceful_stops: Mapping[str, float] | None = None
) -> list[Violation]:
    out = []
    for op in history.ops:
        if op.code not in allowed_codes(op, graceful_stops):
            out.append(
                Violation(
                    "not-actionable",
                    op.phase,
                    f"{op.kind} answered {op.code}",
                    (op.describe(history.t0),),
                )
            )
    return out


def _reads(history: History) -> Iterable[tuple[Op, Observation]]:
    for op in history.ops:
        if op.kind in READ_KINDS:
            for o in op.observations:
                if o.kind == "read":
                    yield op, o


def _item_writes(history: History) -> tuple[dict[str, set[int]], dict[str, dict[int, str]]]:
    """Seqs of item writes never acknowledged, and every item write's token by seq."""
    unacked: dict[str, set[int]] = defaultdict(set)
    tokens: dict[str, dict[int, str]] = defaultdict(dict)
    for op in history.ops:
        if op.kind == "upsert_item":
            seq = int(op.input["seq"])
            tokens[op.entity][seq] = str(op.input["token"])
            if op.code != "OK":
                unacked[op.entity].add(seq)
    return unacked, tokens


def _known_states(history: History) -> dict[str, _Timeline]:
    """Per entity, the first moment each state became known, oldest first."""
    acked: dict[str, dict[int, Known]] = defaultdict(dict)
    for op in history.ops:
        for o in op.observations:
            if o.kind == "ack" and op.code == "OK":
                previous = acked[o.entity].get(o.state)
                if previous is None or op.complete < previous.time:
                    acked[o.entity][o.state] = Known(op.complete, o.state, op, "acknowledged")
    observed: dict[str, dict[int, Known]] = defaultdict(dict)
    for op in history.ops:
        for o in op.observations:
            if o.kind == "ack" or o.entity.startswith("assign:") or o.state == 0:
                continue
            if o.state in acked[o.entity]:
                continue
            previous = observed[o.entity].get(o.state)
            if previous is None or op.complete < previous.time:
                observed[o.entity][o.state] = Known(op.complete, o.state, op, "observed")
    out: dict[str, _Timeline] = {}
    for entity in set(acked) | set(observed):
        states = {**observed[entity], **acked[entity]}
        out[entity] = _Timeline(list(states.values()))
    return out


class _Timeline:
    """Known states of one entity in time order; answers in O(log n) for long soaks."""

    def __init__(self, entries: list[Known]) -> None:
        self.entries = sorted(entries, key=lambda k: k.time)
        self.times = [k.time for k in self.entries]
        # best[i]: the entry with the highest state among entries[: i + 1]
        self.best: list[Known] = []
        for k in self.entries:
            self.best.append(k if not self.best or k.state > self.best[-1].state else self.best[-1])
        self.best_states = [b.state for b in self.best]

    def first_above(self, state: int, before: float) -> Known | None:
        """The earliest entry with a state above ``state``, if it is earlier than ``before``."""
        i = bisect_right(self.best_states, state)
        if i < len(self.entries) and self.entries[i].time < before:
            return self.entries[i]
        return None

    def newest_before(self, before: float) -> Known | None:
        """The entry with the highest state among those earlier than ``before``."""
        i = bisect_left(self.times, before)
        return self.best[i - 1] if i else None


def _faulty(windows: list[Window], t: float) -> bool:
    return any(w.faulty(t) for w in windows)


def check_reads(
    history: History, windows: list[Window], bounds: Bounds
) -> tuple[list[Violation], ReadCheck]:
    """Read-your-writes, bounded staleness and content of every read."""
    known = _known_states(history)
    unacked_items, item_tokens = _item_writes(history)
    ack_tokens: dict[str, dict[int, str]] = defaultdict(dict)
    node_acks: dict[tuple[str, str], list[Known]] = defaultdict(list)
    for op in history.ops:
        for o in op.observations:
            if o.kind == "ack" and op.code == "OK":
                ack_tokens[o.entity][o.state] = o.token
                node_acks[(op.node, o.entity)].append(Known(op.complete, o.state, op, "ack"))
    acks_by_node = {key: _Timeline(entries) for key, entries in node_acks.items()}
    writes: dict[str, list[Op]] = defaultdict(list)
    for op in history.ops:
        if op.kind in VERSIONED_WRITES or op.kind == "upsert_item":
            writes[op.entity].append(op)
    nothing = _Timeline([])
    violations: list[Violation] = []
    figures = ReadCheck()
    t0 = history.t0
    for op, o in _reads(history):
        if o.entity.startswith("assign:"):
            continue  # stickiness is checked on its own
        figures.reads += 1
        expected = (item_tokens if o.entity.startswith("item:") else ack_tokens)[o.entity]
        if o.state in expected and o.token != expected[o.state]:
            violations.append(
                Violation(
                    "wrong-content",
                    op.phase,
                    f"{o.entity} at state {o.state} carries {o.token!r}, "
                    f"written as {expected[o.state]!r}",
                    (op.describe(t0),),
                )
            )
        if o.entity.startswith("item:") and o.state in unacked_items[o.entity]:
            continue
        # A cached "no assignment" names the experiment as missing (issue 10, path 9).
        negative = "assignment" if o.state == 0 and "assign" in o.source else ""
        # 1. read-your-writes on the acknowledging incarnation (no bound)
        newest = acks_by_node.get((op.node, o.entity), nothing).newest_before(op.invoke)
        if newest is not None and o.state < newest.state:
            violations.append(
                Violation(
                    "assignment-not-found-after-create" if negative else "read-your-writes",
                    op.phase,
                    f"{o.entity}: {op.node} acknowledged state {newest.state} "
                    f"{(op.invoke - newest.time) * 1000:.0f} ms before serving {o.state} "
                    f"({o.source})",
                    (newest.op.describe(t0), op.describe(t0)),
                )
            )
            figures.note(op.phase, _faulty(windows, op.invoke), op.invoke - newest.time)
            continue
        # 2. bounded staleness against the first newer state known before the read
        first = known.get(o.entity, nothing).first_above(o.state, op.invoke)
        if first is None:
            figures.note(op.phase, _faulty(windows, op.invoke), 0.0)
            continue
        staleness = op.invoke - first.time
        faulty = _faulty(windows, op.invoke)
        figures.note(op.phase, faulty, staleness)
        bound = bounds.fault_bound_s if faulty else bounds.bound_s
        if staleness > bound:
            kind = "stale-read" if first.how == "acknowledged" else "stale-after-unacked-commit"
            kind = "assignment-not-found-after-create" if negative else kind
            evidence = [first.op.describe(t0), op.describe(t0)]
            if first.how == "observed":
                writers = _unacked_writer(writes[o.entity], first)
                evidence[:0] = ["(unacknowledged writer) " + w.describe(t0) for w in writers]
            violations.append(
                Violation(
                    kind,
                    op.phase,
                    f"{o.entity}: served state {o.state} ({o.source}) {staleness * 1000:.0f} ms "
                    f"after state {first.state} was {first.how} (bound {bound * 1000:.0f} ms)",
                    tuple(evidence),
                )
            )
    return violations, figures


def _unacked_writer(writes: list[Op], known: Known) -> list[Op]:
    """The unacknowledged write that can have made ``known.state`` (the last candidate)."""
    candidates = [
        op
        for op in writes
        if op.code not in ("OK", "ABORTED")  # an aborted upsert wrote nothing
        and op.invoke < known.time
        and (
            (op.kind in VERSIONED_WRITES and op.input.get("version") == known.state - 1)
            or (op.kind == "upsert_item" and op.input.get("seq") == known.state)
        )
    ]
    return candidates[-1:]


def check_sticky(history: History) -> list[Violation]:
    """Every answer for one (experiment, user) names the same variant and bucket."""
    first: dict[str, tuple[str, Op]] = {}
    out = []
    for op, o in _reads(history):
        if not o.entity.startswith("assign:") or o.state != 1:
            continue
        seen = first.setdefault(o.entity, (o.token, op))
        if seen[0] != o.token:
            out.append(
                Violation(
                    "assignment-moved",
                    op.phase,
                    f"{o.entity}: {seen[0]} then {o.token}",
                    (seen[1].describe(history.t0), op.describe(history.t0)),
                )
            )
    return out


@dataclass
class EventFigures:
    sent: int = 0
    stored: int = 0
    duplicate_only: int = 0
    unanswered: int = 0
    present: int = 0
    unmerged_copies: int = 0


def check_events(
    history: History,
    sent: Iterable[str],
    counts: dict[str, dict[str, tuple[int, int]]],
) -> tuple[list[Violation], EventFigures]:
    """Exactly once over the union of the instances' ClickHouse data.

    ``counts``: instance -> event id -> (rows after FINAL, raw rows).
    """
    answers: dict[str, list[tuple[str, Op]]] = defaultdict(list)
    attempts: dict[str, list[Op]] = defaultdict(list)
    for op in history.ops:
        for event_id, status in op.event_outcomes.items():
            answers[event_id].append((status, op))
        for event_id in op.input.get("events", []) if op.kind == "track_events" else []:
            attempts[event_id].append(op)
    figures = EventFigures()
    out = []
    t0 = history.t0
    sent_ids = set(sent)
    for event_id in sorted(sent_ids):
        figures.sent += 1
        where = {name: c[event_id] for name, c in counts.items() if event_id in c}
        total = sum(final for final, _ in where.values())
        figures.present += total > 0
        figures.unmerged_copies += sum(raw - final for final, raw in where.values())
        got = answers.get(event_id, [])
        stored = [op for status, op in got if status == "STORED"]
        if stored:
            figures.stored += 1
        elif got:
            figures.duplicate_only += 1
        else:
            figures.unanswered += 1
        evidence = tuple(op.describe(t0, event_id) for op in attempts[event_id][:6])
        phase = attempts[event_id][0].phase if attempts[event_id] else "-"
        if total > 1:
            out.append(
                Violation(
                    "event-duplicated",
                    phase,
                    f"{event_id} is in ClickHouse {total} times {where}",
                    evidence,
                )
            )
        if got and total == 0:
            if stored:
                message = f"{event_id} was answered STORED and is in no ClickHouse"
            else:
                message = (
                    f"{event_id} was answered DUPLICATE (never STORED) and is in no ClickHouse"
                )
            out.append(Violation("event-lost", phase, message, evidence))
    for name, c in counts.items():
        for event_id in sorted(set(c) - sent_ids):
            out.append(Violation("phantom-event", "-", f"{event_id} in {name} was never sent"))
    return out, figures


def check_convergence(history: History, convergence: Convergence) -> list[Violation]:
    """What still differed from the stores at the end, with the writes behind both values."""
    by_token: dict[str, Op] = {}
    for op in history.ops:
        if op.kind in VERSIONED_WRITES or op.kind == "upsert_item":
            by_token[str(op.input.get("token"))] = op
    out = []
    for m in convergence.mismatches[:20]:
        evidence = []
        for label, value in (("store", m.truth), ("served", m.served)):
            if isinstance(value, tuple) and (writer := by_token.get(value[1])) is not None:
                evidence.append(f"({label} value written by) {writer.describe(history.t0)}")
        message = f"after {convergence.timeout_s:.0f} s: {m}"
        out.append(Violation("not-converged", "final", message, tuple(evidence)))
    return out
