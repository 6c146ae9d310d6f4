"""The table a run prints: one row per fault phase, then the final checks and the evidence."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from tests.consistency.checks import EventFigures, ReadCheck
from tests.consistency.convergence import Convergence
from tests.consistency.faults import Window
from tests.consistency.history import History, Violation

EVIDENCE_PER_KIND = 4


@dataclass
class RunFacts:
    """Everything the report shows besides the history."""

    title: str
    windows: list[Window]
    violations: list[Violation]
    reads: ReadCheck
    convergence: Convergence
    events: EventFigures
    notes: list[str]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _codes(counter: Counter[str]) -> str:
    return ", ".join(f"{code} {n}" for code, n in counter.most_common())


def evidence(violations: list[Violation]) -> str:
    """Every violation with its evidence (the report shows the first few of each kind)."""
    lines = []
    for v in violations:
        lines.append(f"[{v.kind}] phase {v.phase}: {v.message}")
        lines += [f"    {line}" for line in v.evidence]
    return "\n".join(lines)


def render(history: History, facts: RunFacts) -> str:
    phases = [w.name for w in facts.windows] + ["final"]
    ops: dict[str, Counter[str]] = defaultdict(Counter)
    for op in history.ops:
        ops[op.phase][op.code] += 1
    by_phase = Counter(v.phase for v in facts.violations)
    rows = [
        ("phase", "ops", "violations", "stale max, fault bound", "stale max, bound", "outcomes")
    ]
    for phase in ["setup", *phases]:
        if phase not in ops and not by_phase[phase]:
            continue
        worst = facts.reads.worst.get(phase, {})
        rows.append(
            (
                phase,
                str(sum(ops[phase].values())),
                str(by_phase[phase]),
                _ms(worst.get("fault")),
                _ms(worst.get("steady")),
                _codes(ops[phase]),
            )
        )
    unplaced = sum(n for phase, n in by_phase.items() if phase not in {r[0] for r in rows})
    total_ops: Counter[str] = Counter()
    for counter in ops.values():
        total_ops.update(counter)
    rows.append(("TOTAL", str(len(history.ops)), str(len(facts.violations)), "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"== {facts.title} =="]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [row[j].rjust(widths[j]) for j in range(1, 5)]
        lines.append(" | ".join([*cells, row[5]]).rstrip(" |"))
        if i == 0:
            lines.append("-" * (sum(widths) + 3 * 5 + 30))
    for w in facts.windows:
        if w.injected != w.healed:
            bound = "fault bound" if w.relaxed else "bound"
            lines.append(
                f"  {w.name}: fault {(w.injected - history.t0) * 1000:.0f}"
                f"..{(w.healed - history.t0) * 1000:.0f} ms, "
                f"grace until {(w.grace_end - history.t0) * 1000:.0f} ms ({bound})"
            )
    if unplaced:
        lines.append(f"(violations outside any phase row: {unplaced})")
    conv = facts.convergence
    lines.append(
        "convergence: "
        + (
            f"every cached value equals the store after {conv.converged_after_s:.1f} s "
            f"({conv.rounds} rounds)"
            if conv.converged_after_s is not None
            else f"NOT converged after {conv.rounds} rounds"
        )
    )
    e = facts.events
    lines.append(
        f"events: {e.sent} sent; answered STORED {e.stored}, only DUPLICATE {e.duplicate_only}, "
        f"never answered {e.unanswered}; in ClickHouse {e.present} "
        f"(unmerged copies inside one instance: {e.unmerged_copies})"
    )
    lines.append(
        f"reads checked: {facts.reads.reads} (staleness: from when the first state newer than "
        "the one served became known to the read's invoke)"
    )
    lines += [f"note: {n}" for n in facts.notes]
    kinds = Counter(v.kind for v in facts.violations)
    lines.append("violations: " + (", ".join(f"{k} {n}" for k, n in kinds.most_common()) or "none"))
    shown = _sample(facts.violations)
    for v in shown:
        lines.append(f"  [{v.kind}] phase {v.phase}: {v.message}")
        lines += [f"      {line}" for line in v.evidence]
    if hidden := len(facts.violations) - len(shown):
        lines.append(f"  ... and {hidden} more (up to {EVIDENCE_PER_KIND} of each kind shown)")
    return "\n".join(lines)


def _sample(violations: list[Violation]) -> list[Violation]:
    """Up to EVIDENCE_PER_KIND of each kind, preferring phases not shown yet."""
    picked: list[Violation] = []
    seen: set[tuple[str, str]] = set()
    for fresh_phase_only in (True, False):
        for v in violations:
            per_kind = sum(1 for p in picked if p.kind == v.kind)
            if v in picked or per_kind >= EVIDENCE_PER_KIND:
                continue
            if fresh_phase_only and (v.kind, v.phase) in seen:
                continue
            picked.append(v)
            seen.add((v.kind, v.phase))
    return sorted(picked, key=violations.index)
