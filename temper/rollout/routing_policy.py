"""Which engine serves a request: least outstanding requests, with routing-key affinity.

Pure bookkeeping (no I/O), used by temper's router (`router.py`) and tested alone.

Policy. A request without a routing key goes to the healthy worker with the fewest outstanding
requests (ties: fewest requests served so far, then registration order). A request with a routing key
goes to the worker that key went to before, as long as that worker is healthy; the first request of a
key (or one whose worker left or failed) is placed by least outstanding requests and the key remembers
it. When no worker is healthy, every registered worker is a candidate (slow is likelier than dead).
temper's default generate function uses the prompt group as the key, so the n samples of a group
share one engine's prefix cache. Keys are kept in LRU order, at most `max_keys` of them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass


class NoWorkerError(RuntimeError):
    """No healthy worker can take the request."""


@dataclass
class Worker:
    """One engine behind the router, and its counters."""

    url: str
    healthy: bool = True
    outstanding: int = 0
    """Requests forwarded to it whose responses have not finished."""
    total_requests: int = 0
    consecutive_failures: int = 0

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "outstanding": self.outstanding,
            "total_requests": self.total_requests,
        }


@dataclass
class Affinity:
    """Where a routing key's requests go: `url`, how many went there, how often the key moved."""

    url: str
    requests: int = 0
    reassigned: int = 0


class RoutingPolicy:
    """The workers and the key → worker map; see the module docstring for the policy."""

    def __init__(self, max_keys: int = 100_000, unhealthy_after: int = 3) -> None:
        self.workers: dict[str, Worker] = {}
        self.affinity: OrderedDict[str, Affinity] = OrderedDict()
        self.max_keys = max_keys
        self.unhealthy_after = unhealthy_after

    def add(self, url: str) -> Worker:
        """Register `url` (healthy); registering it again only marks it healthy."""
        url = url.rstrip("/")
        worker = self.workers.setdefault(url, Worker(url))
        self.mark_healthy(url)
        return worker

    def remove(self, url: str) -> bool:
        """Forget `url`; its keys move on their next request. Returns whether it was registered."""
        return self.workers.pop(url.rstrip("/"), None) is not None

    def urls(self) -> list[str]:
        return list(self.workers)

    def healthy(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.healthy]

    def mark_healthy(self, url: str) -> None:
        if worker := self.workers.get(url):
            worker.healthy, worker.consecutive_failures = True, 0

    def mark_failed(self, url: str, *, at_once: bool = False) -> None:
        """Count a failed health check (or, with `at_once`, a refused connection: unhealthy now)."""
        if worker := self.workers.get(url):
            worker.consecutive_failures += 1
            if at_once or worker.consecutive_failures >= self.unhealthy_after:
                worker.healthy = False

    def choose(self, key: str | None = None, exclude: Collection[str] = ()) -> Worker:
        """The worker for a request with routing `key` (None: no affinity); skips urls in `exclude`.

        Does not count the request: call `started`/`finished` around it.
        """
        allowed = [w for w in self.workers.values() if w.url not in exclude]
        # When every worker looks unhealthy they are more likely slow than dead: try them anyway
        # (a dead one refuses the connection and is excluded) rather than fail the request.
        candidates = [w for w in allowed if w.healthy] or allowed
        if not candidates:
            known = ", ".join(f"{w.url} ({'healthy' if w.healthy else 'unhealthy'})" for w in self.workers.values())
            raise NoWorkerError(f"no worker left to route to (workers: {known or 'none registered'})")
        if key is None:
            return _least_loaded(candidates)
        entry = self.affinity.get(key)
        if entry is not None and entry.url in {w.url for w in candidates}:
            self.affinity.move_to_end(key)
            entry.requests += 1
            return self.workers[entry.url]
        worker = _least_loaded(candidates)
        self._remember(key, worker.url, moved=entry is not None)
        return worker

    def started(self, worker: Worker) -> None:
        worker.outstanding += 1
        worker.total_requests += 1

    def finished(self, worker: Worker) -> None:
        worker.outstanding = max(worker.outstanding - 1, 0)

    def _remember(self, key: str, url: str, *, moved: bool) -> None:
        old = self.affinity.pop(key, None)
        self.affinity[key] = Affinity(url, requests=1, reassigned=(old.reassigned + 1) if moved and old else 0)
        while len(self.affinity) > self.max_keys:
            self.affinity.popitem(last=False)


def _least_loaded(workers: list[Worker]) -> Worker:
    return min(workers, key=lambda w: (w.outstanding, w.total_requests))
