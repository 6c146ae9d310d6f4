"""The steps of ``mcp-router demo``: seed data, then show the cache at work.

Every id carries a per-run suffix, so each run starts from cold keys and never
conflicts with an earlier one; the demo's Chroma collection is upserted, which
renews its cached searches. Latencies are one call each, measured by the
client (gRPC round trip included): noisy, but FRESH versus CACHED shows.
"""

from __future__ import annotations

import random
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from google.protobuf.message import Message

from mcprouter.client import (
    Analytics,
    Assignment,
    DataType,
    EmbeddingItem,
    Event,
    EventMetrics,
    Experiment,
    ExperimentStatus,
    RouterClient,
    SearchResult,
    Served,
    StatsResponse,
    UserProfile,
    Variant,
    current_hour,
    status_name,
)

COLLECTION = "demo-hypotheses"
USERS = 40
RUNNING = ExperimentStatus.EXPERIMENT_STATUS_RUNNING
DRAFT = ExperimentStatus.EXPERIMENT_STATUS_DRAFT
# slug, name, status, variants as (name, weight, conversion probability)
EXPERIMENTS = (
    ("checkout", "Checkout button colour", RUNNING,
     (("control", 50, 0.20), ("treatment", 50, 0.35))),
    ("search-ranking", "Search ranking model", RUNNING,
     (("control", 34, 0.10), ("bm25", 33, 0.12), ("semantic", 33, 0.18))),
    ("onboarding", "Onboarding e-mail series", DRAFT,
     (("control", 50, 0.0), ("short-tour", 50, 0.0))),
)  # fmt: skip
HYPOTHESES = (
    ("h-green-button", [0.9, 0.1, 0.0, 0.1], "a green checkout button converts better", "checkout"),
    ("h-one-page", [0.8, 0.3, 0.1, 0.0], "a one-page checkout reduces drop-off", "checkout"),
    ("h-free-ship", [0.6, 0.0, 0.0, 0.7], "showing free shipping early lifts orders", "pricing"),
    ("h-semantic", [0.0, 0.9, 0.3, 0.0], "semantic ranking finds long-tail items", "search"),
    ("h-typo", [0.1, 0.8, 0.0, 0.2], "typo tolerance lowers empty results", "search"),
    ("h-tour", [0.0, 0.1, 0.9, 0.1], "a short product tour activates new users", "onboarding"),
)
QUERY = [0.85, 0.2, 0.05, 0.05]  # close to the checkout hypotheses
LABEL = 22


@dataclass(frozen=True, slots=True)
class Timed:
    """A served answer and the milliseconds the client waited for it."""

    served: Served[Any]
    ms: float

    def __str__(self) -> str:
        return f"{self.served.status_name:<7}{self.ms:>8.2f} ms"


async def timed(call: Callable[[], Awaitable[Served[Any]]]) -> Timed:
    """Run ``call`` once and measure it from the client's side."""
    start = time.perf_counter()
    answer = await call()
    return Timed(answer, (time.perf_counter() - start) * 1000)


class Printer:
    """Numbered sections of aligned rows."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.step = 0

    def header(self, title: str, why: str) -> None:
        """Start the next numbered section, with a line or two on what it shows."""
        self.step += 1
        self.line()
        self.line(f"== {self.step}. {title} ==")
        for text in textwrap.wrap(why, 92):
            self.line(f"   {text}")

    def line(self, text: str = "") -> None:
        """Print one line."""
        print(text, file=self.out, flush=True)

    def row(self, label: str, *cells: str) -> None:
        """Print a label and its cells in aligned columns."""
        self.line(f"   {label:<{LABEL}}" + "  ".join(cells))


def type_name(data_type: DataType.ValueType) -> str:
    """``experiment``, ``event_metrics``... for a ``DataType``."""
    return DataType.Name(data_type).removeprefix("DATA_TYPE_").lower()


def _experiment(v: Experiment) -> str:
    status = ExperimentStatus.Name(v.status).removeprefix("EXPERIMENT_STATUS_")
    return f"{v.name!r}, {status}, weights " + ", ".join(f"{x.name}={x.weight}" for x in v.variants)


_DESCRIBE: dict[type[Message], Callable[[Any], str]] = {
    Experiment: _experiment,
    Assignment: lambda v: f"{v.user_id} -> {v.variant} (bucket {v.bucket})",
    UserProfile: lambda v: ", ".join(f"{k}={x}" for k, x in sorted(v.attributes.items())),
    EventMetrics: lambda v: f"{v.count} conversions, sum {v.sum:.2f}, {v.unique_users} users",
    Analytics: lambda v: "; ".join(
        f"{x.variant} converts {x.conversion_rate:.0%} of {x.exposed_users}" for x in v.variants
    ),
    SearchResult: lambda v: "; ".join(f"{h.id} (distance {h.distance:.3f})" for h in v.hits),
}


def describe(value: Message) -> str:
    """A one-line summary of a served value."""
    return _DESCRIBE.get(type(value), lambda v: type(v).__name__)(value)


class Demo:
    """One run of the demo against one server."""

    def __init__(self, client: RouterClient, printer: Printer) -> None:
        self.client = client
        self.p = printer
        self.run = uuid.uuid4().hex[:6]
        self.rng = random.Random(self.run)
        # Seeded events fall in a closed hour: the open hour is never cached.
        self.closed_hour = current_hour() - timedelta(hours=2)
        self.day = self.closed_hour.replace(hour=0)
        self.exp = {slug: f"{slug}-{self.run}" for slug, *_ in EXPERIMENTS}
        self.users = [f"user-{self.run}-{i:03d}" for i in range(USERS)]
        self.newcomer = f"newcomer-{self.run}"
        self.events: list[Event] = []

    def event(self, exp: str, user: str, variant: str, kind: str, value: float = 0.0) -> Event:
        """A new event at a random moment of the closed hour."""
        ev = Event(
            event_id=f"ev-{uuid.uuid4().hex[:12]}",
            experiment_id=exp,
            user_id=user,
            variant=variant,
            event_type=kind,
            value=value,
        )
        ev.timestamp.FromDatetime(self.closed_hour + timedelta(seconds=self.rng.uniform(0, 3599)))
        return ev

    async def seed(self) -> None:
        """Experiments, user profiles, events (via real assignments), embeddings."""
        self.p.header("Seed data", "Writes go to their store (STORED) and invalidate the cache.")
        for slug, name, status, variants in EXPERIMENTS:
            arms = [Variant(name=v, weight=w) for v, w, _ in variants]
            experiment = Experiment(experiment_id=self.exp[slug], name=name, status=status)
            experiment.variants.extend(arms)
            await self.client.upsert_experiment(experiment)
        self.p.row(
            "experiments", f"{len(EXPERIMENTS)} in PostgreSQL: {', '.join(self.exp.values())}"
        )
        for user in [*self.users, self.newcomer]:
            attributes = {
                "plan": self.rng.choice(("free", "pro", "team")),
                "country": self.rng.choice(("NL", "DE", "US", "BR", "JP")),
            }
            await self.client.upsert_user_profile(UserProfile(user_id=user, attributes=attributes))
        self.p.row("user profiles", f"{len(self.users) + 1} in PostgreSQL")
        conversions = 0
        for slug, _, status, variants in EXPERIMENTS:
            if status != RUNNING:
                continue
            rate = {v: p for v, _, p in variants}
            exp, batch = self.exp[slug], []
            for user in self.users:
                variant = (await self.client.get_assignment(exp, user)).value.variant
                batch.append(self.event(exp, user, variant, "exposure"))
                batch += [
                    self.event(exp, user, variant, "page_view")
                    for _ in range(self.rng.randint(1, 3))
                ]
                if self.rng.random() < rate[variant]:
                    value = round(self.rng.uniform(10, 120), 2)
                    batch.append(self.event(exp, user, variant, "conversion", value))
                    conversions += 1
            await self.client.track_events(batch)
            self.events += batch
        self.p.row(
            "events",
            f"{len(self.events)} in ClickHouse ({conversions} conversions) from real "
            f"assignments, hour {self.closed_hour:%Y-%m-%d %H:00} UTC",
        )
        items = [
            EmbeddingItem(id=id_, embedding=vector, document=text)
            for id_, vector, text, _ in HYPOTHESES
        ]
        for item, (*_, area) in zip(items, HYPOTHESES, strict=True):
            item.metadata["area"].string_value = area
        done = (await self.client.upsert_embeddings(COLLECTION, items)).value
        self.p.row("embeddings", f"{done.upserted} hypotheses in Chroma collection {COLLECTION}")

    async def fresh_then_cached(self) -> list[str]:
        """Read each data type twice; return the cache keys."""
        self.p.header(
            "Each data type: first read FRESH, second read CACHED",
            "FRESH = loaded from its store (PostgreSQL, ClickHouse, Chroma) and written to Redis; "
            "CACHED = answered from the cache. Latency as the client measured it.",
        )
        checkout, c = self.exp["checkout"], self.client
        reads: list[tuple[str, Callable[[], Awaitable[Served[Any]]]]] = [
            ("experiment", lambda: c.get_experiment(self.exp["onboarding"])),
            ("assignment", lambda: c.get_assignment(checkout, self.newcomer)),
            ("user profile", lambda: c.get_user_profile(self.newcomer)),
            ("event metrics", lambda: c.get_event_metrics(
                checkout, "treatment", "conversion", self.closed_hour)),
            ("analytics", lambda: c.get_analytics(checkout, self.day)),
            ("semantic search", lambda: c.search(COLLECTION, QUERY, k=2)),
        ]  # fmt: skip
        self.p.row("data type", f"{'1st read':<17}", f"{'2nd read':<17}", "cache key")
        keys, values = [], []
        for label, read in reads:
            first = await timed(read)
            second = await timed(read)
            self.p.row(label, str(first), str(second), first.served.cache_key)
            keys.append(first.served.cache_key)
            values.append((label, describe(second.served.value)))
        self.p.line()
        self.p.line("   What came back:")
        for label, text in values:
            self.p.row(label, text)
        return keys

    async def dedup_and_live_counters(self) -> None:
        """A new event, its repeat, a replayed batch, and the open hour's live counters."""
        self.p.header(
            "Event deduplication and the open hour",
            "An event id is stored once; sending it again is DUPLICATE. The current hour is "
            "still being written, so its metrics come from live Redis counters: always FRESH.",
        )
        checkout = self.exp["checkout"]
        variant = (await self.client.get_assignment(checkout, self.newcomer)).value.variant
        event = self.event(checkout, self.newcomer, variant, "conversion", 42.0)
        event.timestamp.FromDatetime(datetime.now(UTC))
        for label in ("send an event", "send it again"):
            outcome = (await self.client.track_events(event)).value.outcomes[0]
            self.p.row(label, f"{event.event_id}  ->  {status_name(outcome.status)}")
        replay = (await self.client.track_events(self.events[:5])).value
        self.p.row("replay 5 seeded", f"stored {replay.stored}, duplicates {replay.duplicates}")
        for _ in range(2):
            live = await timed(
                lambda: self.client.get_event_metrics(checkout, variant, "conversion")
            )
            figures = live.served.value
            self.p.row(
                f"open hour, {variant}", f"{live}   count={figures.count} sum={figures.sum:g}"
            )

    async def peek(self, keys: Sequence[str]) -> None:
        """GetCached of the keys the reads filled."""
        self.p.header(
            "Peek into the cache", "GetCached reads keys straight from Redis, no store behind it."
        )
        for entry in (await self.client.get_cached(keys)).entries:
            if entry.hit:
                ttl = str(entry.ttl_remaining.ToTimedelta()).split(".")[0]
                self.p.row(type_name(entry.data_type), f"hit   expires in {ttl:>15}   {entry.key}")
            else:
                self.p.row("-", f"miss  {entry.key}")

    async def invalidation(self) -> None:
        """Pattern invalidation, then entity invalidation, each followed by a FRESH read."""
        checkout = self.exp["checkout"]
        self.p.header(
            "Pattern invalidation",
            f"Invalidate(pattern='metrics:{checkout}:*') removes every cached metric of the "
            "experiment (SCAN + UNLINK on the server).",
        )
        await self.client.get_event_metrics(checkout, "control", "conversion", self.closed_hour)
        removed = await self.client.invalidate(pattern=f"metrics:{checkout}:*")
        self.p.row("removed", f"{removed} keys")
        after = await timed(
            lambda: self.client.get_event_metrics(
                checkout, "treatment", "conversion", self.closed_hour
            )
        )
        self.p.row("next metrics read", str(after))

        self.p.header(
            "Entity invalidation",
            f"Invalidate(experiment_id='{checkout}') removes the experiment and everything "
            "derived from it: assignments, metrics, analytics.",
        )
        removed = await self.client.invalidate(experiment_id=checkout)
        self.p.row("removed", f"{removed} keys")
        again = await timed(lambda: self.client.get_analytics(checkout, self.day))
        self.p.row("next analytics read", str(again))
        sticky = await timed(lambda: self.client.get_assignment(checkout, self.newcomer))
        self.p.row(
            "next assignment read", f"{sticky}   still {sticky.served.value.variant} (sticky)"
        )

    async def stats(self, before: StatsResponse) -> None:
        """This run's counters per data type, and the server's totals."""
        self.p.header("Stats", "The server's counters (Stats RPC); the table is this run's share.")
        after = await self.client.stats()
        old = {s.data_type: s for s in before.data_types}
        self.p.row("data type", f"{'hits':>6}  {'misses':>6}  {'loads':>6}")
        hits = misses = 0
        for now in after.data_types:
            prev = old.get(now.data_type)
            d_hits = now.hits - (prev.hits if prev else 0)
            d_misses = now.misses - (prev.misses if prev else 0)
            d_loads = now.loads - (prev.loads if prev else 0)
            hits, misses = hits + d_hits, misses + d_misses
            if d_hits or d_misses:
                self.p.row(type_name(now.data_type), f"{d_hits:>6}  {d_misses:>6}  {d_loads:>6}")
        self.p.line()
        if hits + misses:
            self.p.row(
                "this run", f"{hits / (hits + misses):.1%} of {hits + misses} cached reads hit"
            )
        self.p.row("hit rate", f"{after.hit_rate:.1%} of cached reads since the server started")
        self.p.row("queries avoided", f"{after.store_queries_avoided} store queries in all")
        self.p.row("dedup hits", f"{after.dedup_hits} duplicate events rejected")
        self.p.row("invalidations", f"{after.invalidations} keys removed")
        memory = after.redis_used_memory_bytes / 1_048_576
        self.p.row("redis", f"{after.redis_key_count} keys, {memory:.1f} MiB used")
        self.p.line()
        self.p.line(
            "   (Seeding made every assignment for the first time, so most misses are those: "
            "a miss is a store query.)"
        )
