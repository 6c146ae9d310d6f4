"""The invalidation feed: one Redis pub/sub channel shared by every instance.

Whoever invalidates publishes ``{"keys": [...], "patterns": [...], "origin": id}`` on the
channel after Redis removed the keys (``invalidation.py``; sharded pub/sub on
a Redis Cluster, see ``topology.py``); every instance,
itself included, applies it to its L1. Pub/sub is at-most-once, so the L1
serves only while this subscription is known to be up, and starts empty
after every reconnect.

"Known to be up" is checked, not assumed: a connection can die silently (a
firewall or NAT drops it, the peer host vanishes) and then no error ever
arrives. When the channel has been quiet for ``ping_interval_s``, the feed
sends PING on the subscription; if neither the PONG nor any message arrives
within another interval, the subscription is declared dead: the L1 turns off
(empty) and the feed reconnects. So with a dead feed an L1 entry is served
for at most about twice the interval (or the L1's max age, if shorter). Any
failure, not only Redis errors, ends in the same place: L1 off, reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence

from mcprouter.server.cache.guard import REDIS_ERRORS
from mcprouter.server.cache.topology import RedisClient, Subscription

logger = logging.getLogger("mcprouter.server.cache")

RECONNECT_DELAY_S = 1.0
PING_INTERVAL_S = 1.0


def encode_message(keys: Sequence[str], patterns: Sequence[str], *, origin: str) -> bytes:
    """The wire form of one invalidation (``origin`` names the sending instance)."""
    return json.dumps({"keys": list(keys), "patterns": list(patterns), "origin": origin}).encode()


def decode_message(raw: bytes) -> tuple[list[str], list[str], str] | None:
    """Keys, patterns and origin of a message, or ``None`` when it is malformed."""
    try:
        body = json.loads(raw)
        keys, patterns, origin = body["keys"], body["patterns"], body.get("origin", "")
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(keys, list) or not isinstance(patterns, list):
        return None
    if not all(isinstance(x, str) for x in [*keys, *patterns, origin]):
        return None
    return keys, patterns, origin


class InvalidationFeed:
    """Subscribes to the channel and hands every message to ``apply``."""

    def __init__(
        self,
        redis: RedisClient,
        channel: str,
        *,
        apply: Callable[[list[str], list[str], str], None],
        on_connected: Callable[[bool], None],
        ping_interval_s: float = PING_INTERVAL_S,
        reconnect_delay_s: float = RECONNECT_DELAY_S,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.channel = channel
        self._redis = redis
        self._apply = apply
        self._on_connected = on_connected
        self._ping_interval = ping_interval_s
        self._reconnect_delay = reconnect_delay_s
        # A cluster client must know its slot map before the sharded subscribe.
        self._ready = ready
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    def start(self) -> None:
        """Start listening in the background (reconnecting as needed)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="invalidation feed")

    async def aclose(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._set_connected(False)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self._on_connected(connected)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                logger.warning("invalidation feed lost (%s); local cache off", exc)
            except Exception:
                logger.exception("invalidation feed failed; local cache off")
            self._set_connected(False)
            await asyncio.sleep(self._reconnect_delay)

    async def _listen(self) -> None:
        subscription = Subscription(self._redis, self.channel)
        loop = asyncio.get_running_loop()
        try:
            if self._ready is not None:
                await self._ready()
            await subscription.open()
            pinged_at: float | None = None
            while True:
                message = await subscription.next(self._ping_interval)
                if message is not None:
                    pinged_at = None  # anything heard proves the subscription alive
                    self._handle(message)
                elif pinged_at is None:
                    await subscription.ping()
                    pinged_at = loop.time()
                elif loop.time() - pinged_at >= self._ping_interval:
                    # A silent subscription is a timeout like any other.
                    raise TimeoutError(
                        f"no answer to PING within {self._ping_interval:g} s on {self.channel!r}"
                    )
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await subscription.aclose()

    def _handle(self, message: dict[str, object]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # Confirmed by Redis: from here on no message is missed.
            self._set_connected(True)
        elif kind == "message":
            data = message["data"]
            decoded = decode_message(data) if isinstance(data, bytes) else None
            if decoded is None:
                logger.warning("ignoring a malformed invalidation message")
            else:
                self._apply(*decoded)
