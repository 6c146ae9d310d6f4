"""The seeded workload: several clients, each picking an instance at random per call.

Every client has its own ``random.Random(seed, client)`` and draws the same
number of values for every operation whatever the phase, so the sequence of
operations of a client is a function of the seed; which phase an operation
lands in (and the versions it writes) depends on timing.

Writes to one entity never overlap: a writer holds the entity's lock for its
RPC and writes the newest version the checker knows of (from acks, reads and
the ``current_version`` of a conflict), so versions are a total order and
"newer" is decidable. Event batches are retried with the same event ids after
an error or timeout, sometimes on the other instance.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcprouter.v1 import router_service_pb2 as rs
from mcprouter.v1.events_pb2 import Event
from tests.consistency import protocol as p
from tests.consistency.cluster import Instance
from tests.consistency.history import History, Observation, Op
from tests.consistency.rpc import Channels, Outcome, call

# The entities that do not exist at the start may be written by a client only
# from its n-th operation on (one threshold per late entity, in order), so they
# come into existence during the run, after NOT_FOUND was served and cached for
# them: a negative entry must not outlive the creation. Before that, the write
# becomes a read of the same entity (the sequence stays a function of the seed).
LATE_FROM_OP = (100, 300, 600)
RETRYABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "ABORTED"}
EVENT_ATTEMPTS = 4
# Relative frequency of each operation.
MIX: tuple[tuple[str, int], ...] = (
    ("get_experiment", 16),
    ("get_profile", 12),
    ("get_assignment", 8),
    ("search", 8),
    ("get_cached", 8),
    ("upsert_experiment", 10),
    ("upsert_profile", 8),
    ("upsert_item", 5),
    ("invalidate", 6),
    ("track_events", 10),
)


@dataclass(frozen=True)
class Universe:
    """The entities of a run (few, so that reads and writes collide often)."""

    experiments: tuple[str, ...] = tuple(f"ck-e{i}" for i in range(6))
    precreated_experiments: int = 3  # e0..e2 exist from the start; events use e0, e1
    users: tuple[str, ...] = tuple(f"ck-u{i}" for i in range(6))
    precreated_users: int = 3
    items: tuple[str, ...] = tuple(f"it{i}" for i in range(4))
    assignment_users: tuple[str, ...] = tuple(f"ck-a{i}" for i in range(4))

    @property
    def event_experiments(self) -> tuple[str, ...]:
        return self.experiments[:2]

    def entity_keys(self) -> list[str]:
        keys = [p.cache_key(p.experiment_entity(e)) for e in self.experiments]
        keys += [p.cache_key(p.user_entity(u)) for u in self.users]
        keys += [
            p.cache_key(p.assignment_entity(e, u))
            for e in self.experiments
            for u in self.assignment_users
        ]
        return keys


@dataclass
class Conditions:
    """What the fault controller changes for the clients."""

    phase: str = "setup"
    p_tight: float = 0.05  # share of calls with a 10-100 ms deadline
    p_cancel: float = 0.04  # share of calls the client cancels after 0-50 ms


@dataclass
class Knowledge:
    """What the checker's writers know: newest versions, item counters, locks."""

    versions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    item_seq: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    locks: dict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))

    def learn(self, observations: list[Observation]) -> None:
        for o in observations:
            if not o.entity.startswith(("exp:", "user:")):
                continue
            self.versions[o.entity] = max(self.versions[o.entity], o.state)


class Workload:
    """Drives the clients and records every call in the history."""

    def __init__(
        self,
        history: History,
        instances: list[Instance],
        channels: Channels,
        conditions: Conditions,
        *,
        seed: int,
        clients: int,
        universe: Universe | None = None,
    ) -> None:
        self.history = history
        self.instances = instances
        self.channels = channels
        self.conditions = conditions
        self.seed = seed
        self.clients = clients
        self.universe = universe or Universe()
        self.knowledge = Knowledge()
        self.events: dict[str, Event] = {}  # every event ever sent, by id
        self._sent_batches: dict[int, list[list[Event]]] = defaultdict(list)
        self._kinds = [k for k, _ in MIX]
        self._weights = [w for _, w in MIX]

    # --- one recorded call -----------------------------------------------------

    async def rpc(
        self,
        client: int,
        index: int,
        kind: str,
        entity: str,
        method: str,
        request: Any,
        summary: dict[str, Any],
        *,
        deadline_s: float,
        cancel_after_s: float | None = None,
    ) -> tuple[Op, Outcome]:
        instance = self.instances[index]
        op = self.history.new(
            client=client,
            instance=instance.name,
            incarnation=instance.incarnation,
            kind=kind,
            entity=entity,
            input=summary,
            invoke=time.monotonic(),
            phase=self.conditions.phase,
            deadline_s=deadline_s,
        )
        stub = self.channels.stubs[index]
        outcome = await call(
            getattr(stub, method), request, deadline_s=deadline_s, cancel_after_s=cancel_after_s
        )
        op.complete = time.monotonic()
        op.code = outcome.code
        op.cancelled_by_client = outcome.cancelled_by_client
        if outcome.code != "OK":
            op.detail = f"{outcome.reason} {outcome.message}".strip()[:200]
        elif method == "RouteData":
            op.status = p.status_name(outcome.response.status)
        return op, outcome

    # --- setup ---------------------------------------------------------------

    async def setup(self) -> None:
        """Create the entities that exist from the start, through instance 0."""
        u = self.universe
        writes: list[tuple[str, str, Any]] = []
        for e in u.experiments[: u.precreated_experiments]:
            writes.append((p.experiment_entity(e), "upsert_experiment", None))
        for user in u.users[: u.precreated_users]:
            writes.append((p.user_entity(user), "upsert_profile", None))
        for entity, kind, _ in writes:
            await self._write_versioned(-1, 0, kind, entity, deadline_s=10.0, cancel_after_s=None)
        for i, item in enumerate(u.items):
            await self._write_item(-1, 0, item, i, deadline_s=30.0, cancel_after_s=None)
        missing = [e for e, _, _ in writes if self.knowledge.versions[e] < 1] + [
            i for i in u.items if self.knowledge.item_seq[i] < 1
        ]
        if missing:
            raise RuntimeError(f"setup writes failed: {missing}")

    # --- the clients -----------------------------------------------------------

    async def run(self, until: Callable[[], bool]) -> None:
        await asyncio.gather(*(self._client(c, until) for c in range(self.clients)))

    async def _client(self, client: int, until: Callable[[], bool]) -> None:
        rng = random.Random(self.seed * 1000 + client)
        counter = 0
        while not until():
            counter += 1
            kind = rng.choices(self._kinds, self._weights)[0]
            index = rng.randrange(len(self.instances))
            deadline_s = rng.uniform(0.3, 2.0)
            tight, cancel = rng.random(), rng.random()
            tight_deadline, cancel_after = rng.uniform(0.01, 0.1), rng.uniform(0.0, 0.05)
            if tight < self.conditions.p_tight:
                deadline_s = tight_deadline
            cancel_after_s = cancel_after if cancel < self.conditions.p_cancel else None
            pick = rng.random()
            kind = self._unless_too_early(kind, pick, counter)
            token = f"c{client}.{counter}"
            await self._one(client, rng, kind, index, pick, token, deadline_s, cancel_after_s)
            await asyncio.sleep(rng.uniform(0.002, 0.02))

    def _unless_too_early(self, kind: str, pick: float, counter: int) -> str:
        """The write, or a read of the same entity if that entity may not exist yet."""
        u = self.universe
        if kind == "upsert_experiment":
            late = int(pick * len(u.experiments)) - u.precreated_experiments
            read = "get_experiment"
        elif kind == "upsert_profile":
            late = int(pick * len(u.users)) - u.precreated_users
            read = "get_profile"
        else:
            return kind
        if late >= 0 and counter < LATE_FROM_OP[min(late, len(LATE_FROM_OP) - 1)]:
            return read
        return kind

    async def _one(
        self,
        client: int,
        rng: random.Random,
        kind: str,
        index: int,
        pick: float,
        token: str,
        deadline_s: float,
        cancel_after_s: float | None,
    ) -> None:
        u = self.universe
        limits: dict[str, Any] = {"deadline_s": deadline_s, "cancel_after_s": cancel_after_s}
        if kind == "get_experiment":
            e = u.experiments[int(pick * len(u.experiments))]
            await self._read(
                client, index, kind, p.experiment_entity(e), p.get_experiment(e), **limits
            )
        elif kind == "get_profile":
            user = u.users[int(pick * len(u.users))]
            await self._read(
                client, index, kind, p.user_entity(user), p.get_profile(user), **limits
            )
        elif kind == "get_assignment":
            e = u.experiments[int(pick * len(u.experiments))]
            user = u.assignment_users[rng.randrange(len(u.assignment_users))]
            entity = p.assignment_entity(e, user)
            await self._read(client, index, kind, entity, p.get_assignment(e, user), **limits)
        elif kind == "search":
            i = int(pick * len(u.items))
            entity = p.item_entity(u.items[i])
            await self._read(client, index, kind, entity, p.search_item(u.items[i], i), **limits)
        elif kind == "get_cached":
            keys = rng.sample(u.entity_keys(), rng.randint(1, 4))
            await self._get_cached(client, index, keys, **limits)
        elif kind == "upsert_experiment":
            e = u.experiments[int(pick * len(u.experiments))]
            await self._write_versioned(
                client, index, kind, p.experiment_entity(e), token=token, **limits
            )
        elif kind == "upsert_profile":
            user = u.users[int(pick * len(u.users))]
            await self._write_versioned(
                client, index, kind, p.user_entity(user), token=token, **limits
            )
        elif kind == "upsert_item":
            i = int(pick * len(u.items))
            await self._write_item(client, index, u.items[i], i, token=token, **limits)
        elif kind == "invalidate":
            await self._invalidate(client, rng, index, pick, **limits)
        elif kind == "track_events":
            await self._track(client, rng, index, pick, token, deadline_s, cancel_after_s)

    # --- operations -------------------------------------------------------------

    async def _read(
        self,
        client: int,
        index: int,
        kind: str,
        entity: str,
        request: Any,
        *,
        deadline_s: float,
        cancel_after_s: float | None,
    ) -> None:
        op, outcome = await self.rpc(
            client, index, kind, entity, "RouteData", request, {},
            deadline_s=deadline_s, cancel_after_s=cancel_after_s,
        )  # fmt: skip
        if outcome.code == "OK":
            op.observations = p.read_observations(outcome.response, entity)
        elif outcome.code == "NOT_FOUND":
            source = f"{kind} NOT_FOUND"
            if kind == "get_assignment":  # the experiment does not exist (yet)
                entity = p.experiment_entity(entity.split(":")[1])
            if entity.startswith(("exp:", "user:")):
                op.observations = [Observation(entity, 0, "read", "", source)]
        self.knowledge.learn(op.observations)

    async def _get_cached(
        self,
        client: int,
        index: int,
        keys: list[str],
        *,
        deadline_s: float,
        cancel_after_s: float | None,
    ) -> None:
        op, outcome = await self.rpc(
            client, index, "get_cached", ",".join(keys), "GetCached", p.get_cached(keys), {},
            deadline_s=deadline_s, cancel_after_s=cancel_after_s,
        )  # fmt: skip
        if outcome.code == "OK":
            op.observations = p.cached_observations(outcome.response)
        self.knowledge.learn(op.observations)

    async def _write_versioned(
        self,
        client: int,
        index: int,
        kind: str,
        entity: str,
        *,
        token: str = "setup",
        deadline_s: float,
        cancel_after_s: float | None,
    ) -> None:
        ident = entity.split(":", 1)[1]
        async with self.knowledge.locks[entity]:
            version = self.knowledge.versions[entity]
            if kind == "upsert_experiment":
                weight = 1 + sum(map(ord, token)) % 9
                request = p.upsert_experiment(ident, version, token, weight)
            else:
                request = p.upsert_profile(ident, version, token, counter=len(self.history.ops))
            op, outcome = await self.rpc(
                client, index, kind, entity, "RouteData", request,
                {"version": version, "token": token},
                deadline_s=deadline_s, cancel_after_s=cancel_after_s,
            )  # fmt: skip
            if outcome.code == "OK":
                response = outcome.response
                stored = (
                    response.experiment if kind == "upsert_experiment" else response.user_profile
                )
                op.observations = [Observation(entity, stored.version, "ack", token)]
            elif outcome.code == "ABORTED" and "current_version" in outcome.metadata:
                current = int(outcome.metadata["current_version"])
                op.observations = [Observation(entity, current, "abort")]
            self.knowledge.learn(op.observations)

    async def _write_item(
        self,
        client: int,
        index: int,
        item: str,
        item_index: int,
        *,
        token: str = "setup",
        deadline_s: float,
        cancel_after_s: float | None,
    ) -> None:
        entity = p.item_entity(item)
        async with self.knowledge.locks[entity]:
            self.knowledge.item_seq[item] += 1
            seq = self.knowledge.item_seq[item]
            op, outcome = await self.rpc(
                client, index, "upsert_item", entity, "RouteData",
                p.upsert_item(item, item_index, seq, token), {"seq": seq, "token": token},
                deadline_s=deadline_s, cancel_after_s=cancel_after_s,
            )  # fmt: skip
            if outcome.code == "OK":
                op.observations = [Observation(entity, seq, "ack", token)]
            elif client < 0:
                self.knowledge.item_seq[item] -= 1  # setup: not written, try again later

    async def _invalidate(
        self,
        client: int,
        rng: random.Random,
        index: int,
        pick: float,
        *,
        deadline_s: float,
        cancel_after_s: float | None,
    ) -> None:
        u = self.universe
        e = u.experiments[int(pick * len(u.experiments))]
        user = u.users[int(pick * len(u.users))]
        choice = rng.randrange(4)
        if choice == 0:
            keys = rng.sample(u.entity_keys(), rng.randint(1, 3))
            request = rs.InvalidateRequest(keys=rs.KeyList(keys=keys))
            summary: dict[str, Any] = {"keys": keys}
        elif choice == 1:
            request, summary = rs.InvalidateRequest(experiment_id=e), {"experiment_id": e}
        elif choice == 2:
            request, summary = rs.InvalidateRequest(user_id=user), {"user_id": user}
        else:
            pattern = rng.choice(["experiment:ck-e*", "user:ck-u*", f"assignment:{e}:*"])
            request, summary = rs.InvalidateRequest(pattern=pattern), {"pattern": pattern}
        await self.rpc(
            client, index, "invalidate", "-", "Invalidate", request, summary,
            deadline_s=deadline_s, cancel_after_s=cancel_after_s,
        )  # fmt: skip

    async def _track(
        self,
        client: int,
        rng: random.Random,
        index: int,
        pick: float,
        token: str,
        deadline_s: float,
        cancel_after_s: float | None,
    ) -> None:
        sent = self._sent_batches[client]
        if sent and pick < 0.1:
            batch = sent[rng.randrange(len(sent))]  # a late resend of an earlier batch
        else:
            batch = []
            for k in range(rng.randint(1, 5)):
                e = self.universe.event_experiments[rng.randrange(2)]
                user = f"ck-v{rng.randrange(50)}"
                variant = p.VARIANTS[rng.randrange(2)]
                kind = "conversion" if rng.random() < 0.3 else "view"
                batch.append(p.make_event(f"ev-{token}-{k}", e, user, variant, kind))
        sent.append(batch)
        # Retries draw from their own generator: how many happen depends on
        # timing, and must not shift the client's sequence of operations.
        retry_rng = random.Random(f"{self.seed}/{token}")
        await self.send_events(client, retry_rng, index, batch, deadline_s, cancel_after_s)

    async def send_events(
        self,
        client: int,
        rng: random.Random,
        index: int,
        batch: list[Event],
        deadline_s: float,
        cancel_after_s: float | None,
        attempts: int = EVENT_ATTEMPTS,
    ) -> bool:
        """Send a batch, retrying with the same ids; True once some attempt answered OK."""
        for event in batch:
            self.events.setdefault(event.event_id, event)
        ids = [e.event_id for e in batch]
        for attempt in range(attempts):
            op, outcome = await self.rpc(
                client, index, "track_events", f"{len(batch)} events", "RouteData",
                p.track_events(batch), {"events": ids, "attempt": attempt},
                deadline_s=deadline_s, cancel_after_s=cancel_after_s if attempt == 0 else None,
            )  # fmt: skip
            if outcome.code == "OK":
                for o in outcome.response.track_events_result.outcomes:
                    op.event_outcomes[o.event_id] = p.status_name(o.status)
                return True
            if outcome.code not in RETRYABLE:
                return False
            await asyncio.sleep(rng.uniform(0.05, 0.25))
            if rng.random() < 0.5:
                index = (index + 1) % len(self.instances)
            deadline_s = max(deadline_s, 0.5)
        return False
