"""The embedded Valkey keeps the state role across restarts (append-only file under DATA_DIR)."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from mcprouter.server.embedded import embedded_redis


async def test_a_key_survives_a_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    async with embedded_redis(tmp_path) as url:
        client = aioredis.Redis.from_url(url)
        try:
            # What a dedup record looks like: it must outlive the process.
            await client.set("_dedup:ev-1", b"1", ex=3600)
            config = await client.config_get("appendonly")
            assert config["appendonly"] == "yes"
        finally:
            await client.aclose()
    assert any((tmp_path / "valkey").rglob("*.aof")), list((tmp_path / "valkey").rglob("*"))
    async with embedded_redis(tmp_path) as url:
        client = aioredis.Redis.from_url(url)
        try:
            assert await client.get("_dedup:ev-1") == b"1"
            assert 0 < await client.ttl("_dedup:ev-1") <= 3600
        finally:
            await client.aclose()
