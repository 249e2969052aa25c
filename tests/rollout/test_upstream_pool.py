"""The router's upstream clients: a new shard opens only while every open one is full, up to max_connections."""

from __future__ import annotations

import asyncio

from temper.rollout.upstream_pool import UpstreamPool


def test_shards_open_as_concurrency_grows_and_requests_take_the_least_busy():
    async def scenario() -> None:
        pool = UpstreamPool(max_connections=10, per_shard=4, trust_env=False)
        taken = [pool.acquire() for _ in range(4)]
        assert taken == [0, 0, 0, 0] and len(pool.shards) == 1  # a light load keeps one client
        assert pool.acquire() == 1 and pool.busy == [4, 1]  # the first is full: a second opens
        pool.release(0)
        pool.release(0)
        assert pool.acquire() == 1  # the least busy (1 < 2)
        taken = [pool.acquire() for _ in range(6)]
        assert len(pool.shards) == 3 == pool.max_shards and pool.busy == [4, 4, 2]
        assert pool.acquire() in (0, 1, 2)  # all full and no more shards allowed: the least busy waits in its pool
        assert pool.shards[0]._transport._pool._max_connections == 4  # each client holds at most per_shard
        await pool.aclose()
        assert pool.shards == []

    asyncio.run(scenario())
