"""`RolloutsAhead`: train_async's generator, a thread that keeps generating rollouts ahead of training.

Rollouts start, start+1, ... are generated in order, one at a time, by `rollout.generate(k)` in a
background thread. The thread runs at most `depth` rollouts ahead of the one training last took
(`--async-buffer-size`): with depth 1, rollout k+1 is generated while rollout k trains, as in slime's
train_async. `paused()` waits for the generation in flight and starts none until the block ends: the
driver wraps weight updates and evaluation in it, so weights never change in the middle of a rollout
and every sample of a rollout carries one weight version.

Each finished rollout keeps the data source's state right after it (`Generated.data_state`), so
that a checkpoint of rollout k resumes with the prompts of k+1, although the source has moved on.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

from temper.types import RolloutBatch


@dataclass
class Generated:
    """One finished rollout: the batch, the rollout manager's metrics, the data source's state after it."""

    batch: RolloutBatch
    metrics: dict[str, float]
    data_state: dict[str, Any]
    samples: list = field(default_factory=list)  # the trained samples, with their text


class RolloutsAhead:
    """See the module docstring. `rollout` is a `RolloutManager` (anything with `generate`,
    `last_metrics` and `data_source.state_dict()`)."""

    def __init__(self, rollout: Any, start: int, stop: int, depth: int):
        self.rollout, self.stop, self.depth = rollout, stop, depth
        self._cond = threading.Condition()
        self._done: dict[int, Generated | BaseException] = {}
        self._next = start  # the next rollout to generate
        self._taken = start  # the next rollout training will take
        self._pauses = 0
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="temper-rollouts-ahead", daemon=True)
        self._thread.start()

    def _may_start(self) -> bool:
        return self._closed or (self._next < self.stop and self._next - self._taken < self.depth and not self._pauses)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(self._may_start)
                if self._closed:
                    return
                k, self._busy = self._next, True
            try:
                batch = self.rollout.generate(k)
                result: Generated | BaseException = Generated(
                    batch, dict(self.rollout.last_metrics), copy.deepcopy(self.rollout.data_source.state_dict()),
                    list(getattr(self.rollout, "last_samples", [])),
                )
            except BaseException as e:  # noqa: BLE001 -- handed to the trainer's get()
                result = e
            with self._cond:
                self._done[k], self._next, self._busy = result, k + 1, False
                self._cond.notify_all()
            if isinstance(result, BaseException):
                return

    def get(self, rollout_id: int) -> Generated:
        """Rollout `rollout_id` (waiting for it); lets generation run `depth` rollouts past it."""
        with self._cond:
            self._taken = rollout_id + 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: rollout_id in self._done or not self._thread.is_alive())
            result = self._done.pop(rollout_id, None)
        if result is None:
            raise RuntimeError(f"the rollout thread stopped before rollout {rollout_id}")
        if isinstance(result, BaseException):
            raise result
        return result

    def paused(self) -> _Paused:
        """Context manager: no generation runs inside it (the one in flight finishes first)."""
        return _Paused(self)

    def close(self) -> None:
        """Stop after the generation in flight (if any)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()


class _Paused:
    def __init__(self, ahead: RolloutsAhead):
        self.ahead = ahead

    def __enter__(self) -> None:
        with self.ahead._cond:
            self.ahead._pauses += 1
            self.ahead._cond.wait_for(lambda: not self.ahead._busy)

    def __exit__(self, *exc: object) -> None:
        with self.ahead._cond:
            self.ahead._pauses -= 1
            self.ahead._cond.notify_all()
