"""What a train rank is working on right now, for the driver's live line of a long phase.

    progress = WorkProgress()
    with progress.stage("train", "step 1/2", total=len(micro_batches), unit="micro-batches"):
        for mb in micro_batches:
            ...                                   # forward and backward
            progress.advance(tokens=mb.num_tokens)
    progress.snapshot()                           # from another thread: a WorkState, or None between stages

The training loop only writes a few Python numbers per micro-batch (no device synchronisation, no
lock on the hot path beyond one uncontended acquire), so keeping it costs nothing measurable; `tokens`
counts what the host has handed to the device, which on a GPU runs ahead of the kernels by at most the
launch queue. The cluster reads `snapshot()` from rank 0 through a Ray call of its own
(`TrainWorker.progress`), which runs beside the rank's long call.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkState:
    """One look at a rank's current stage (this crosses the Ray boundary to the driver).

    kind: the driver phase the stage belongs to ("train", "sync" or "save"). stage: what it does
    ("ref log-probs", "step 1/2", "weights", "checkpoint", ...). done / total: units finished / to
    finish in the stage (total None: unknown). unit: "micro-batches", "bytes" or "". tokens: tokens
    of the finished micro-batches. seconds: since the stage began (the rank's own clock).
    """

    kind: str
    stage: str
    done: int = 0
    total: int | None = None
    unit: str = ""
    tokens: int = 0
    seconds: float = 0.0


class WorkProgress:
    """The current stage of one rank (see the module docstring); one writer, any number of readers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stage: tuple[str, str, int | None, str, float] | None = None  # kind, stage, total, unit, started
        self._done = 0
        self._tokens = 0

    @contextlib.contextmanager
    def stage(self, kind: str, stage: str, total: int | None = None, unit: str = "") -> Iterator[None]:
        """The block is stage `stage` of driver phase `kind`, finishing `total` units of `unit`."""
        with self._lock:
            self._stage, self._done, self._tokens = (kind, stage, total, unit, time.monotonic()), 0, 0
        try:
            yield
        finally:
            with self._lock:
                self._stage = None

    def advance(self, done: int = 1, tokens: int = 0) -> None:
        """`done` more units (and `tokens` more tokens) of the current stage finished."""
        with self._lock:
            self._done += done
            self._tokens += tokens

    def snapshot(self) -> WorkState | None:
        """The current stage, or None between stages."""
        with self._lock:
            if self._stage is None:
                return None
            kind, stage, total, unit, started = self._stage
            return WorkState(kind, stage, self._done, total, unit, self._tokens, time.monotonic() - started)
