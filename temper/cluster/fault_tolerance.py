"""`EngineDoctor`: --use-fault-tolerance's engine restarts.

temper's router (fault tolerant) health-checks every engine with a real generation and takes one that
fails a check, refuses a connection or drops a request out at once, sending its requests in flight to
the others (`temper.rollout.router`). It tells the doctor, whose thread then restarts the engine: the
old process is killed (a stuck one too) and a new `EngineWorker` starts on the same bundle (the same
GPUs; on CPU a new actor process) with the same arguments. The new engine holds the checkpoint's
weights, so it re-joins the weight sync (the sync group is formed again over the current engines),
loads the weights of the version the others serve, and only then goes back into the router:

- right away when the trainer still holds exactly that version (no training since the last sync);
- otherwise at the next weight sync, which brings every engine to the new version (until then the
  other engines serve the rollout).

`heal()` runs at the start of every weight sync (`Cluster.update_weights`): the engines reported
meanwhile and those that do not answer ``/health`` within --rollout-health-check-timeout are
restarted before the sync, so a sync never waits on a dead or stuck engine; an engine that dies in the
middle of a sync is restarted and the sync sent again. Engines named by --rollout-external-engine-addrs
are taken out of the router but not restarted (temper does not own them).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import httpx

logger = logging.getLogger(__name__)


class EngineDoctor:
    """See the module docstring. `cluster` is the run's `Cluster`; its `sync_lock` orders restarts with
    training and weight syncs."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.engines = cluster.engines
        self.waiting: list[str] = []  # restarted engines not in the router yet (they need the weights first)
        self.restarts: list[tuple[str, str, str]] = []  # (old url, new url, reason), for the run's log and tests
        self._reports: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="temper-engine-doctor", daemon=True)
        self._thread.start()

    def report(self, url: str, reason: str) -> None:
        """The router took `url` out (called on the router's thread: only queued here)."""
        self._reports.put((url, reason))

    def _run(self) -> None:
        while (item := self._reports.get()) is not None:
            url, reason = item
            try:
                with self.cluster.sync_lock:
                    if self.engines.slot_of(url) is None:
                        continue  # external, or restarted already by heal()
                    self._restart(url, reason)
                    if self.cluster.engines_current():
                        self.cluster.update_weights(self.cluster.engine_version)  # weights, then the router
            except Exception:
                logger.exception("restarting engine %s failed; the next weight sync tries again", url)

    def heal(self) -> None:
        """Restart the engines reported or not answering now (under the sync lock)."""
        reported = []
        while True:
            try:
                item = self._reports.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                reported.append(item)
        timeout = self.cluster.cfg.rollout_health_check_timeout
        stuck = [(u, f"it did not answer /health within {timeout:g} s") for u in self.engines.unresponsive(timeout)]
        for url, reason in reported + stuck:
            if self.engines.slot_of(url) is not None:
                self._restart(url, reason)

    def _restart(self, url: str, reason: str) -> None:
        router = self.cluster.rollout.router_url
        try:  # the router took it out already when it noticed; heal() may be first
            httpx.post(f"{router}/remove_worker", params={"url": url}, timeout=30, trust_env=False)
        except httpx.HTTPError as e:
            logger.warning("removing engine %s from the router %s failed: %s", url, router, e)
        index = self.engines.slot_of(url)
        logger.warning("engine %s failed (%s); restarting it%s", url, reason, self.engines.describe_failure(url))
        if url in self.waiting:
            self.waiting.remove(url)
        new_url = self.engines.restart(index)
        self.restarts.append((url, new_url, reason))
        self.waiting.append(new_url)

    def admit(self) -> None:
        """The restarted engines, now holding the current weights, back into the router."""
        router = self.cluster.rollout.router_url
        for url in self.waiting:
            response = httpx.post(f"{router}/add_worker", params={"url": url}, timeout=330, trust_env=False)
            response.raise_for_status()
            logger.warning("engine %s is back in the router", url)
        self.waiting = []

    def close(self) -> None:
        self._reports.put(None)
        self._thread.join(timeout=5)
