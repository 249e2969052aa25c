"""`UpstreamPool`: the router's HTTP connections to its engines, split over small httpx clients.

httpx's connection pool looks at every one of its connections for each request it places (httpcore's
``_assign_requests_to_connections``), so one client holding thousands of connections costs its process
CPU that grows with the square of the requests in flight: with 2,000 requests in flight on the CPU machine
temper's router spent ~15 ms of CPU on each request, 53% of it in that scan, and served 61 requests a second
where its one engine alone served 213 (benchmarks/engine_load.py). Here each client (a shard) holds at most
`per_shard` connections; a request takes the least busy shard, and a new shard opens while every open one is
full and `max_connections` allows, so a light load keeps one client and a heavy one spreads the scan.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

PER_SHARD = 64


class UpstreamPool:
    """Shards of at most `per_shard` connections, `max_connections` in all. `acquire()` names the shard a request
    uses (its client: `client(shard)`) until `release(shard)`; `client_kwargs` go to every httpx client."""

    def __init__(self, max_connections: int, per_shard: int = PER_SHARD, **client_kwargs: Any) -> None:
        self.per_shard = max(1, min(per_shard, max_connections))
        self.max_shards = -(-max_connections // self.per_shard)
        self.client_kwargs = client_kwargs
        self.verify = ssl.create_default_context()  # one CA bundle load for every shard (~45 ms each otherwise)
        self.shards: list[httpx.AsyncClient] = []
        self.busy: list[int] = []  # requests in flight on each shard

    def acquire(self) -> int:
        """The shard for one more request (least busy; a new one when all are full and one may open)."""
        shard = min(range(len(self.shards)), key=self.busy.__getitem__, default=None)
        if shard is None or (self.busy[shard] >= self.per_shard and len(self.shards) < self.max_shards):
            limits = httpx.Limits(max_connections=self.per_shard, max_keepalive_connections=self.per_shard)
            self.shards.append(httpx.AsyncClient(limits=limits, verify=self.verify, **self.client_kwargs))
            self.busy.append(0)
            shard = len(self.shards) - 1
        self.busy[shard] += 1
        return shard

    def client(self, shard: int) -> httpx.AsyncClient:
        return self.shards[shard]

    def release(self, shard: int) -> None:
        self.busy[shard] -= 1

    async def aclose(self) -> None:
        for client in self.shards:
            await client.aclose()
        self.shards, self.busy = [], []
