"""The invalidation feed: one Redis pub/sub channel shared by every instance.

Whoever invalidates publishes ``{"keys": [...], "patterns": [...], "origin": id}`` on the
channel (in the same pipeline as the UNLINK, so Redis has already removed the
keys when the message goes out); every instance, itself included, applies it
to its L1. Pub/sub is at-most-once, so the L1 serves only while this
subscription is up, and starts empty after every reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from mcprouter.server.cache.guard import REDIS_ERRORS

logger = logging.getLogger("mcprouter.server.cache")

RECONNECT_DELAY_S = 1.0


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
        redis: aioredis.Redis,
        channel: str,
        *,
        apply: Callable[[list[str], list[str], str], None],
        on_connected: Callable[[bool], None],
    ) -> None:
        self.channel = channel
        self._redis = redis
        self._apply = apply
        self._on_connected = on_connected
        self._task: asyncio.Task[None] | None = None

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
        self._on_connected(False)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except REDIS_ERRORS as exc:
                logger.warning("invalidation feed lost (%s); local cache off", exc)
            self._on_connected(False)
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            async for message in pubsub.listen():
                kind = message.get("type")
                if kind == "subscribe":
                    # Confirmed by Redis: from here on no message is missed.
                    self._on_connected(True)
                elif kind == "message":
                    decoded = decode_message(message["data"])
                    if decoded is None:
                        logger.warning("ignoring a malformed invalidation message")
                    else:
                        self._apply(*decoded)
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
