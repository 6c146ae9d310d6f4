"""The checks on hand-made histories: each invariant flags its violation, and only that."""

from __future__ import annotations

from typing import Any

from tests.consistency.checks import (
    Bounds,
    check_codes,
    check_convergence,
    check_events,
    check_reads,
    check_sticky,
)
from tests.consistency.convergence import Convergence, Mismatch
from tests.consistency.faults import Window
from tests.consistency.history import History, Observation, Op

BOUNDS = Bounds(bound_s=0.1, fault_bound_s=2.0)


def _op(
    history: History,
    kind: str,
    entity: str,
    at: tuple[float, float],
    code: str = "OK",
    *observations: Observation,
    instance: str = "i0",
    incarnation: int = 1,
    **fields: Any,
) -> Op:
    op = history.new(
        client=0,
        instance=instance,
        incarnation=incarnation,
        kind=kind,
        entity=entity,
        input=fields.pop("input", {}),
        invoke=at[0],
        phase="p",
        **fields,
    )
    op.complete, op.code, op.observations = at[1], code, list(observations)
    return op


def _write(history: History, version: int, at: tuple[float, float], **kw: Any) -> Op:
    ack = Observation("exp:e", version, "ack", f"t{version}")
    return _op(history, "upsert_experiment", "exp:e", at, "OK", ack, **kw)


def _read(history: History, version: int, at: tuple[float, float], **kw: Any) -> Op:
    seen = Observation("exp:e", version, "read", f"t{version}", "CACHED")
    return _op(history, "get_experiment", "exp:e", at, "OK", seen, **kw)


def kinds(history: History, windows: list[Window] | None = None) -> list[str]:
    return [v.kind for v in check_reads(history, windows or [], BOUNDS)[0]]


def test_read_your_writes_holds_on_the_acknowledging_incarnation_only() -> None:
    h = History(0.0)
    _write(h, 2, (1.0, 1.01))
    _read(h, 1, (1.02, 1.03))  # same instance, older value: violation
    _read(h, 1, (1.02, 1.03), instance="i1")  # other instance, within the bound: fine
    _read(h, 1, (1.02, 1.03), incarnation=2)  # restarted process: bound only
    assert kinds(h) == ["read-your-writes"]


def test_staleness_beyond_the_bound_and_the_fault_bound_in_a_window() -> None:
    h = History(0.0)
    _write(h, 2, (1.0, 1.01))
    _read(h, 1, (1.5, 1.51), instance="i1")
    assert kinds(h) == ["stale-read"]
    window = Window("w", start=1.4, relaxed=True, injected=1.4, healed=1.45, grace_end=3.0)
    violations, figures = check_reads(h, [window], BOUNDS)
    assert violations == []
    assert round(figures.worst["p"]["fault"]) == 490
    window.relaxed = False  # a fault that leaves the invalidation feed up: tight bound
    assert kinds(h, [window]) == ["stale-read"]


def test_a_commit_revealed_by_a_conflict_counts_from_when_it_was_seen() -> None:
    h = History(0.0)
    _op(h, "upsert_experiment", "exp:e", (0.9, 0.95), "CANCELLED", input={"version": 1})
    revealed = Observation("exp:e", 2, "abort")
    _op(h, "upsert_experiment", "exp:e", (1.0, 1.01), "ABORTED", revealed, input={"version": 1})
    _read(h, 1, (1.05, 1.06), instance="i1")  # 40 ms after: within the bound
    _read(h, 1, (1.2, 1.21), instance="i1")
    violations, _ = check_reads(h, [], BOUNDS)
    assert [v.kind for v in violations] == ["stale-after-unacked-commit"]
    assert "(unacknowledged writer)" in violations[0].evidence[0]


def test_reads_of_unacknowledged_item_writes_are_not_judged() -> None:
    h = History(0.0)
    item = "item:x"
    ack = Observation(item, 2, "ack", "b")
    _op(h, "upsert_item", item, (1.0, 1.01), "OK", ack, input={"seq": 2, "token": "b"})
    _op(h, "upsert_item", item, (0.5, 0.6), "DEADLINE_EXCEEDED", input={"seq": 1, "token": "a"})
    late = Observation(item, 1, "read", "a", "FRESH")
    _op(h, "search", item, (1.5, 1.51), "OK", late)  # the late write landed: allowed
    wrong = Observation(item, 2, "read", "zz", "CACHED")
    _op(h, "search", item, (1.6, 1.61), "OK", wrong)
    assert kinds(h) == ["wrong-content"]


def test_codes_that_are_not_actionable() -> None:
    h = History(0.0)
    _op(h, "upsert_profile", "user:u", (0, 1), "INTERNAL")
    _op(h, "get_experiment", "exp:e", (0, 1), "CANCELLED")  # not cancelled by us
    _op(h, "get_experiment", "exp:e", (0, 1), "CANCELLED", cancelled_by_client=True)
    _op(h, "upsert_profile", "user:u", (0, 1), "NOT_FOUND")
    _op(h, "get_profile", "user:u", (0, 1), "NOT_FOUND")
    _op(h, "upsert_profile", "user:u", (0, 1), "ABORTED")
    assert [v.message for v in check_codes(h)] == [
        "upsert_profile answered INTERNAL",
        "get_experiment answered CANCELLED",
        "upsert_profile answered NOT_FOUND",
    ]


def test_cancelled_is_allowed_only_once_its_node_was_being_stopped() -> None:
    h = History(0.0)
    before = _op(h, "get_profile", "user:u", (0.5, 0.9), "CANCELLED")
    after = _op(h, "get_profile", "user:u", (0.9, 1.2), "CANCELLED")
    # a later incarnation of the node was not being stopped
    other = _op(h, "get_profile", "user:u", (0.9, 1.2), "CANCELLED", incarnation=2)
    stops = {after.node: 1.0}
    assert [v.evidence[0] for v in check_codes(h, stops)] == [
        before.describe(0.0),
        other.describe(0.0),
    ]


def test_assignments_never_move() -> None:
    h = History(0.0)
    for token in ("control/1", "control/1", "treatment/9"):
        seen = Observation("assign:e:u", 1, "read", token)
        _op(h, "get_assignment", "assign:e:u", (0, 1), "OK", seen)
    assert [v.kind for v in check_sticky(h)] == ["assignment-moved"]


def test_events_exactly_once_over_the_union() -> None:
    h = History(0.0)
    op = _op(h, "track_events", "4 events", (0, 1), input={"events": ["a", "b", "c", "d"]})
    op.event_outcomes = {"a": "STORED", "b": "STORED", "c": "DUPLICATE", "d": "STORED"}
    counts = {"i0": {"a": (1, 2), "b": (1, 1), "z": (1, 1)}, "i1": {"b": (1, 1), "d": (1, 1)}}
    violations, figures = check_events(h, ["a", "b", "c", "d", "e"], counts)
    assert sorted((v.kind, v.message.split()[0]) for v in violations) == [
        ("event-duplicated", "b"),
        ("event-lost", "c"),
        ("phantom-event", "z"),
    ]
    assert (figures.sent, figures.present, figures.unanswered, figures.unmerged_copies) == (
        5,
        3,
        1,
        1,
    )


def test_convergence_names_the_writes_behind_both_values() -> None:
    h = History(0.0)
    _op(h, "upsert_experiment", "exp:e", (1.0, 1.1), "OK", input={"token": "t1"})
    _op(h, "upsert_experiment", "exp:e", (2.0, 2.1), "UNAVAILABLE", input={"token": "t2"})
    convergence = Convergence(
        15.0, mismatches=[Mismatch("i0 CACHED", "exp:e", (1, "t1"), (2, "t2"))]
    )
    (violation,) = check_convergence(h, convergence)
    assert violation.kind == "not-converged"
    assert violation.evidence[0].startswith("(store value written by) op#1")
    assert violation.evidence[1].startswith("(served value written by) op#0")
