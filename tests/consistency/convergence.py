"""Convergence: once writes stop and faults heal, every cached value equals the store.

Polls (bounded) until a whole round agrees: every entity read through every
instance, and every entity key (and the search keys those reads used) read
with GetCached, equal what PostgreSQL and Chroma hold when read directly.
Assignments are read first and the truth after, since a read makes a
missing assignment.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from tests.consistency import protocol as p
from tests.consistency.rpc import Channels, call
from tests.consistency.stores import chroma_truth, postgres_truth
from tests.consistency.workload import Universe

DEADLINE_S = 3.0


@dataclass(frozen=True)
class Mismatch:
    """A value served (or an error) that differs from the store's."""

    where: str  # "i0 CACHED", "GetCached experiment:x", ...
    entity: str
    served: tuple[int, str] | str  # (state, token), or the error
    truth: tuple[int, str]

    def __str__(self) -> str:
        return f"{self.entity} via {self.where}: {self.served} but the store holds {self.truth}"


@dataclass
class Convergence:
    timeout_s: float
    converged_after_s: float | None = None
    rounds: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)  # of the last round


def _requests(u: Universe) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    out += [(p.experiment_entity(e), p.get_experiment(e)) for e in u.experiments]
    out += [(p.user_entity(x), p.get_profile(x)) for x in u.users]
    out += [
        (p.assignment_entity(e, x), p.get_assignment(e, x))
        for e in u.experiments
        for x in u.assignment_users
    ]
    out += [(p.item_entity(item), p.search_item(item, i)) for i, item in enumerate(u.items)]
    return out


async def _round(
    channels: Channels, names: list[str], u: Universe, dsn: str, chroma_url: str
) -> list[Mismatch]:
    served: list[tuple[str, str, tuple[int, str] | str]] = []  # (where, entity, value or error)
    search_keys: list[str] = []
    for name, stub in zip(names, channels.stubs, strict=True):
        for entity, request in _requests(u):
            outcome = await call(stub.RouteData, request, deadline_s=DEADLINE_S)
            if outcome.code == "OK":
                for o in p.read_observations(outcome.response, entity):
                    served.append((f"{name} {o.source}", entity, (o.state, o.token)))
                if outcome.response.cache_key.startswith("search:"):
                    search_keys.append(outcome.response.cache_key)
            elif outcome.code == "NOT_FOUND":
                served.append((f"{name} NOT_FOUND", entity, (0, "")))
            else:
                served.append((name, entity, f"{outcome.code} {outcome.message}"))
    keys = u.entity_keys() + sorted(set(search_keys))
    cached = await call(channels.stubs[0].GetCached, p.get_cached(keys), deadline_s=DEADLINE_S)
    truth = await postgres_truth(dsn)
    truth.states.update((await asyncio.to_thread(chroma_truth, chroma_url, list(u.items))).states)
    mismatches = [
        Mismatch(where, entity, value, truth.get(entity))
        for where, entity, value in served
        if value != truth.get(entity)
    ]
    if cached.code != "OK":
        mismatches.append(Mismatch("GetCached", "-", f"{cached.code} {cached.message}", (0, "")))
        return mismatches
    for entry in cached.response.entries:
        if not entry.hit:
            continue
        if entry.key.startswith("search:"):
            hits = entry.search_result.hits
            item = hits[0].metadata["item"].string_value if hits else ""
            entity = p.item_entity(item)
            value = (hits[0].metadata["seq"].int_value, hits[0].metadata["tok"].string_value)
        else:
            (o,) = p.cached_observations(type(cached.response)(entries=[entry]))
            # a cached "no assignment" speaks for its experiment (see protocol)
            entity, value = o.entity, (o.state, o.token)
        if value != truth.get(entity):
            mismatches.append(Mismatch(f"GetCached {entry.key}", entity, value, truth.get(entity)))
    return mismatches


async def converge(
    channels: Channels,
    names: list[str],
    universe: Universe,
    dsn: str,
    chroma_url: str,
    timeout_s: float,
) -> Convergence:
    """Poll rounds until one agrees with the stores or ``timeout_s`` passed."""
    result = Convergence(timeout_s)
    started = time.monotonic()
    while time.monotonic() - started < timeout_s or result.rounds == 0:
        result.rounds += 1
        result.mismatches = await _round(channels, names, universe, dsn, chroma_url)
        if not result.mismatches:
            result.converged_after_s = time.monotonic() - started
            return result
        await asyncio.sleep(0.25)
    return result
