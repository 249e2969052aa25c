"""Live progress of a run's long phases: what the current phase has done so far, while it runs.

`LiveProgress.phase(name)` shows, for as long as the phase lasts, its name, its seconds and what its
watcher reports. On a terminal it is one rich status line, redrawn twice a second and removed when the
phase ends (the step's progress line stays, `progress.py`). Elsewhere (logs, CI) a phase that runs longer
than `quiet_s` gets a plain line every `quiet_s` seconds, and a short one prints nothing:

    rollout 31 s: 96/256 samples, 4.1k tok/s, at most 52 s left
    train 30 s: step 1/2, 5/8 micro-batches, 12.3k tok/s
    sync 30 s: weights, 4100/8200 MB, 950 MB/s
    save 30 s: actor checkpoint
    eval 30 s: 40/500 samples, 3.9k tok/s, at most 75 s left

A watcher is a callable returning a `Progress` (or None when it cannot tell); it is called from the
display's thread and must not block for long. `EngineWatcher` is the rollout's and the evaluation's: it
reads the engines' ``/v1/loads`` counters (finished requests, generated tokens) and counts from the
phase's start. The train ranks' watcher (train, sync, save) is the cluster's (`cluster/phase_watchers.py`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from temper.rollout.engine_client import load_entries

REFRESH_S = 0.5
QUIET_S = 30.0


@dataclass
class Progress:
    done: float | None = None  # units finished so far in this phase (or its stage)
    total: float | None = None  # units the phase will finish (None: unknown)
    unit: str = ""
    rate: float | None = None  # `rate_unit` a second, where the watcher knows it
    eta_s: float | None = None  # seconds left, where the watcher can estimate them
    stage: str = ""  # what part of the phase runs now ("step 1/2", "weights"), where it has parts
    rate_unit: str = "tok/s"

    def describe(self) -> str:
        parts = [self.stage] if self.stage else []
        if self.done is not None:
            total = f"/{_number(self.total)}" if self.total else ""
            parts.append(f"{_number(self.done)}{total} {self.unit}".rstrip())
        if self.rate is not None:
            rate = f"{self.rate / 1000:.1f}k" if self.rate >= 1000 else f"{self.rate:.0f}"
            parts.append(f"{rate} {self.rate_unit}")
        if self.eta_s is not None:
            parts.append(f"at most {self.eta_s:.0f} s left")
        return ", ".join(parts)


def _number(x: float) -> str:
    """Whole numbers as they are; fractions (megabytes) with one decimal below 10."""
    return f"{x:.1f}" if x < 10 and x != int(x) else f"{x:.0f}"


Watcher = Callable[[], "Progress | None"]


class LiveProgress:
    """The live line of the current phase (see the module docstring). `watchers` maps a phase name to a
    factory that makes the phase's watcher when the phase starts."""

    def __init__(self, stream: Any = None, *, quiet_s: float | None = None, refresh_s: float = REFRESH_S,
                 terminal: bool | None = None):
        self.stream = stream or sys.stdout
        self.terminal = getattr(self.stream, "isatty", lambda: False)() if terminal is None else terminal
        self.quiet_s = QUIET_S if quiet_s is None else quiet_s
        self.refresh_s = refresh_s
        self.watchers: dict[str, Callable[[], Watcher]] = {}

    def watch(self, phase: str, make_watcher: Callable[[], Watcher]) -> None:
        self.watchers[phase] = make_watcher

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        stop = threading.Event()
        started = time.monotonic()
        thread = threading.Thread(target=self._show, args=(name, self.watchers.get(name), started, stop),
                                  daemon=True, name=f"temper-live-{name}")  # fmt: skip
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5.0)

    def _show(self, name: str, make: Callable[[], Watcher] | None, started: float, stop: threading.Event) -> None:
        """The display thread: makes the phase's watcher here, off the phase's own time."""
        try:
            watcher = make() if make is not None else None
        except Exception:  # noqa: BLE001 -- a display must never stop the run
            watcher = None
        try:
            (self._rich if self.terminal else self._plain)(name, watcher, started, stop)
        finally:
            close = getattr(watcher, "close", None)
            if close is not None:
                close()

    def line(self, name: str, watcher: Watcher | None, started: float) -> str:
        progress = None
        if watcher is not None:
            try:
                progress = watcher()
            except Exception:  # noqa: BLE001 -- a display must never stop the run
                progress = None
        detail = progress.describe() if progress is not None else ""
        return f"{name} {time.monotonic() - started:.0f} s" + (f": {detail}" if detail else "")

    def _plain(self, name: str, watcher: Watcher | None, started: float, stop: threading.Event) -> None:
        while not stop.wait(self.quiet_s):
            print(f"  {self.line(name, watcher, started)}", file=self.stream, flush=True)

    def _rich(self, name: str, watcher: Watcher | None, started: float, stop: threading.Event) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream, highlight=False, force_terminal=True)
        with Live(console=console, transient=True, refresh_per_second=4, auto_refresh=False) as live:
            while True:
                live.update(self.line(name, watcher, started), refresh=True)
                if stop.wait(self.refresh_s):
                    break


class EngineWatcher:
    """The rollout's progress from its engines' ``/v1/loads``: requests finished and tokens generated
    since the phase started, against `total` samples (the rollout's batch) of at most `max_tokens` each."""

    def __init__(self, urls: list[str], total: int | None, max_tokens: int | None = None, timeout_s: float = 2.0):
        import httpx

        self.urls = list(urls)
        self.total = total
        self.max_tokens = max_tokens
        plain = all(u.startswith("http://") for u in self.urls)  # plain HTTP: no CA bundle to load
        self._http = httpx.Client(timeout=timeout_s, trust_env=False, verify=not plain)
        self.started = time.monotonic()
        self.base = self._counters()

    def _counters(self) -> tuple[float, float] | None:
        finished = tokens = 0.0
        for url in self.urls:
            try:
                body = self._http.get(f"{url}/v1/loads", params={"include": "core"}).json()
            except Exception:  # noqa: BLE001 -- an engine that does not answer now: no figure this time
                return None
            for entry in load_entries(body):
                if "num_finished_reqs" not in entry:
                    return None
                finished += float(entry["num_finished_reqs"])
                tokens += float(entry.get("num_generated_tokens", 0))
        return finished, tokens

    def __call__(self) -> Progress | None:
        now = self._counters()
        if now is None or self.base is None:
            return None
        done, tokens = now[0] - self.base[0], now[1] - self.base[1]
        seconds = max(time.monotonic() - self.started, 1e-6)
        rate = tokens / seconds
        eta = None
        if self.total and self.max_tokens and rate > 0:
            left = max(self.total * self.max_tokens - tokens, 0.0)  # at most: every sample to its limit
            eta = left / rate
        return Progress(done=min(done, self.total) if self.total else done, total=self.total, unit="samples",
                        rate=rate, eta_s=eta)  # fmt: skip

    def close(self) -> None:
        self._http.close()
