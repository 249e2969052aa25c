"""`AsyncEngine`: the single-threaded `LLMEngine` driven by one loop thread, for asyncio callers.

The loop thread is the only code that touches the engine. It runs queued commands, then one
`engine.step()`, and repeats while there is work; with nothing to do it sleeps on a condition
variable. Everything else (adding and aborting requests, weight loads, cache flushes, memory ops) is a
command, so it runs between two steps, never in the middle of one. Results reach asyncio through
`loop.call_soon_threadsafe`: a command's return value settles an asyncio future, and each request's
outputs are put, as ``(index, RequestOutput)`` pairs, on the asyncio queue the caller passed in.

Pause: ``in_place`` and ``retract`` stop stepping and keep every request's state (temper does not
move running requests back to the queue, so ``retract`` behaves as ``in_place``); ``abort`` aborts
everything first. Requests that arrive while paused, or while memory is released, are held outside the
engine and added on `continue_generation` / `resume_memory`.

Bursts: an RL rollout sends its whole batch at once, but the requests reach the engine one by one over
tens of milliseconds. An idle engine that stepped on the first arrival would prefill the batch in many
small steps and decode it at staggered starts (extra steps for every late arrival). So an idle engine
that gets requests keeps taking arrivals until none has come for `burst_quiet_s` (at most `burst_max_s`
in all) before its first step; the waiting loop thread holds no GIL meanwhile, so the HTTP thread
admits the rest of the burst at full speed. A lone request pays at most `burst_quiet_s`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from temper.engine import RequestOutput

logger = logging.getLogger(__name__)

_MAX_DRAIN_STEPS = 1000  # bound on steps spent delivering aborts (each aborted request needs one)
DEFAULT_HELD_TIMEOUT_S = 1800.0  # how long a request may wait while the engine is paused or released
DEFAULT_BURST_QUIET_S = 0.01  # an idle engine's first step waits until no request arrived for this long
DEFAULT_BURST_MAX_S = 0.2  # ... but at most this long after the first arrival


class Unavailable(RuntimeError):
    """A request the engine could not serve in time (held while paused or released); HTTP 503."""


@dataclasses.dataclass
class _Sink:
    """Where one engine request's outputs go: ``queue.put_nowait((index, output))`` on `loop`."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    index: int
    prompt_ids: list[int]


@dataclasses.dataclass
class NewRequest:
    """One engine request to add: `rid` must be unique among in-flight requests."""

    rid: str
    prompt_ids: list[int]
    params: Any  # temper.engine.sampling_params.SamplingParams
    index: int = 0
    stream: bool = True  # False: outputs only after the first token, at weight-version changes and at the end
    return_routed_experts: bool = False  # the final output carries its tokens' routed experts (MoE)


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def abort_output(rid: str, prompt_ids: list[int], version: str) -> RequestOutput:
    """The final output of a request aborted before it reached the engine: no tokens, finished."""
    return RequestOutput(
        request_id=rid, prompt_token_ids=list(prompt_ids), output_token_ids=[], output_logprobs=[],
        new_token_ids=[], text="", finished=True, finish_reason="abort", matched_stop=None,
        cached_tokens=0, weight_version=version,
    )


class AsyncEngine:
    """Owns `engine` through a loop thread; all public coroutines are safe to call from asyncio."""

    def __init__(self, engine: Any, held_timeout: float | None = DEFAULT_HELD_TIMEOUT_S,
                 burst_quiet_s: float = DEFAULT_BURST_QUIET_S, burst_max_s: float = DEFAULT_BURST_MAX_S):
        if burst_quiet_s < 0 or burst_max_s < 0:
            raise ValueError(f"burst_quiet_s and burst_max_s must be >= 0 seconds, got {burst_quiet_s}, {burst_max_s}")
        self.engine = engine
        self.held_timeout = held_timeout  # None: requests wait for as long as the engine is paused
        self.burst_quiet_s = burst_quiet_s  # 0: an idle engine steps on its first arrival
        self.burst_max_s = burst_max_s
        self.requests_added = 0  # requests that went into the engine (loop thread)
        # Busy periods (loop thread; wall-clock seconds, comparable across processes of one host): how many
        # times the engine went from idle to stepping, when the last period's first step started, and when
        # the engine last ran out of work.
        self.busy_periods = 0
        self.busy_since = 0.0
        self.idle_since = 0.0
        self._busy = False
        self.tokenizer = engine.tokenizer
        self.paused = False
        self.released: set[str] = set()
        self.stats: dict[str, Any] = {}
        self.num_weight_updates = 0
        self.step_seconds = 0.0  # wall time spent in engine.step() (the loop thread's busy time)
        self._cv = threading.Condition()
        self._commands: deque[Callable[[], None]] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Loop-thread state.
        self._sinks: dict[str, _Sink] = {}
        self._held: dict[str, tuple[NewRequest, float]] = {}  # request and when it was held, oldest first
        # Event-loop state: futures resolved by the next delivery of any output.
        self._progress_waiters: list[asyncio.Future] = []
        self._refresh_stats()

    @property
    def weight_version(self) -> str:
        return self.engine.weight_version

    @property
    def not_serving(self) -> str | None:
        """Why requests are held rather than run ("paused", "memory released (kv_cache)"), else None."""
        if self.paused:
            return "paused"
        if self.released:
            return f"memory released ({', '.join(sorted(self.released))})"
        return None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="temper-engine-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        """Close the engine (its tensor-parallel workers) once the loop thread has stopped."""
        if self._thread is not None and self._thread.is_alive():
            logger.warning("the engine loop did not stop; leaving the engine open")
            return
        self.engine.close()

    # ---- commands --------------------------------------------------------------------------
    def submit(self, fn: Callable[[], Any]) -> asyncio.Future:
        """Run `fn()` on the loop thread between steps; the returned future gets its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def run() -> None:
            try:
                result, error = fn(), None
            except Exception as e:  # noqa: BLE001 -- delivered to the caller, who turns it into an HTTP error
                result, error = None, e
            loop.call_soon_threadsafe(_settle, fut, result, error)

        with self._cv:
            if self._stopping:
                raise RuntimeError("the engine loop is stopped")
            self._commands.append(run)
            self._cv.notify()
        return fut

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``await engine.call(fn, *args)``: `fn(*args)` run on the loop thread between two steps."""
        return await self.submit(lambda: fn(*args))

    async def add_requests(self, requests: list[NewRequest], queue: asyncio.Queue) -> None:
        """Add `requests` atomically; their outputs go to `queue`. ValueError if the engine rejects one
        (then none of them is left running)."""
        loop = asyncio.get_running_loop()
        await self.submit(lambda: self._add(requests, loop, queue))

    async def abort(self, rid_prefix: str = "", abort_all: bool = False) -> int:
        """Abort requests whose rid starts with `rid_prefix` (or all); returns how many were found."""
        if not abort_all and not rid_prefix:
            return 0
        return await self.submit(lambda: self._abort(lambda rid: abort_all or rid.startswith(rid_prefix)))

    def abort_soon(self, rids: list[str]) -> None:
        """Fire-and-forget abort of exact `rids` (used when a client goes away)."""
        wanted = set(rids)
        with self._cv:
            self._commands.append(lambda: self._abort(wanted.__contains__))
            self._cv.notify()

    async def pause(self, mode: str) -> None:
        await self.submit(lambda: self._pause(mode))

    async def resume(self) -> None:
        await self.submit(self._continue)

    def progress_future(self) -> asyncio.Future:
        """A future resolved by the next delivery of any request output (call on the event loop)."""
        fut = asyncio.get_running_loop().create_future()
        self._progress_waiters.append(fut)
        return fut

    def set_weight_version(self, version: str | None) -> str:
        """Loop thread: bump the weight version to `version`, or to the next counter value."""
        self.num_weight_updates += 1
        while version is None or version == "":
            candidate = str(self.num_weight_updates)
            if candidate != self.engine.weight_version:
                version = candidate
            else:
                self.num_weight_updates += 1
        self.engine.weight_version = version
        return version

    def abort_everything(self) -> int:
        """Loop thread: abort every request (``abort_all_requests`` of the weight routes)."""
        return self._abort(lambda rid: True)

    def memory(self, release: bool, tags: list[str] | None) -> None:
        """Loop thread: release or resume memory for `tags` (None = all); generation waits while any
        tag is released."""
        engine_tags = None if tags is None else [t for t in tags if t != "cuda_graph"]
        all_tags = {"weights", "kv_cache"} if tags is None else set(engine_tags)
        if release:
            self.engine.release_memory(engine_tags)
            self.released |= all_tags
        else:
            self.engine.resume_memory(engine_tags)
            self.released -= all_tags
            self._admit_held()

    # ---- loop thread -----------------------------------------------------------------------
    def _can_step(self) -> bool:
        return not self.paused and not self.released and self.engine.has_unfinished_requests()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._commands and not self._stopping and not self._can_step():
                    if self._cv.wait(self._next_expiry()) is False:
                        break  # a held request's time is up
                if self._stopping:
                    return
                commands = list(self._commands)
                self._commands.clear()
            idle, added = not self.engine.has_unfinished_requests(), self.requests_added
            for run in commands:
                run()
            if idle and self.requests_added > added:
                self._gather_burst()
            self._expire_held()
            if self._can_step():
                self._step()
            self._refresh_stats()

    def _gather_burst(self) -> None:
        """Run arriving commands until no request has come for `burst_quiet_s` (see the module docstring)."""
        deadline = time.monotonic() + self.burst_max_s
        while True:
            with self._cv:
                left = deadline - time.monotonic()
                if not self._commands and not self._stopping and left > 0:
                    self._cv.wait(min(self.burst_quiet_s, left))
                if self._stopping or not self._commands:
                    return
                commands = list(self._commands)
                self._commands.clear()
            added = self.requests_added
            for run in commands:
                run()
            if self.requests_added == added or time.monotonic() >= deadline:
                return

    def _step(self) -> None:
        if not self._busy:
            self._busy, self.busy_since = True, time.time()
            self.busy_periods += 1
        started = time.perf_counter()
        try:
            outputs = self.engine.step()
        except Exception as e:  # keep serving: fail the in-flight requests instead of the server
            logger.exception("engine.step() failed; aborting %d in-flight requests", len(self._sinks))
            self._fail_all(e)
            return
        finally:
            self.step_seconds += time.perf_counter() - started
            if not self.engine.has_unfinished_requests():
                self._busy, self.idle_since = False, time.time()
        self._deliver(outputs)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        batch = []
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is None:
                continue
            if out.finished:
                del self._sinks[out.request_id]
            batch.append((sink, out))
        self._post(batch)

    def _post(self, batch: list[tuple[_Sink, Any]]) -> None:
        """Hand `(sink, item)` pairs to their event loops with one callback per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for sink, item in batch:
            by_loop.setdefault(sink.loop, []).append((sink.queue, (sink.index, item)))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(self._put_all, items)

    def _put_all(self, items: list) -> None:
        for queue, item in items:
            queue.put_nowait(item)
        waiters, self._progress_waiters = self._progress_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _add(self, requests: list[NewRequest], loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        for req in requests:
            if req.rid in self._sinks:
                raise ValueError(f"rid: a request with id {req.rid!r} is already running")
        in_engine: list[str] = []
        try:
            for req in requests:
                if self.paused or self.released:
                    self._held[req.rid] = (req, time.monotonic())
                else:
                    self.engine.add_request(req.prompt_ids, req.params, req.rid, stream=req.stream,
                                            return_routed_experts=req.return_routed_experts)
                    in_engine.append(req.rid)
                    self.requests_added += 1
                self._sinks[req.rid] = _Sink(loop, queue, req.index, req.prompt_ids)
        except Exception:
            for req in requests:  # all or nothing: a batch with one bad prompt is rejected whole
                self._held.pop(req.rid, None)
                self._sinks.pop(req.rid, None)
            for rid in in_engine:  # their abort outputs find no sink and are dropped
                self.engine.abort_request(rid)
            raise

    def _abort(self, match: Callable[[str], bool]) -> int:
        rids = [rid for rid in self._sinks if match(rid)]
        stepping = not self.paused and not self.released
        for rid in rids:
            if self._held.pop(rid, None) is not None:
                self._finish_now(rid)
            else:
                self.engine.abort_request(rid)
        if not stepping:  # no step will come to report the aborts: report them now, with their tokens
            self._deliver(self.engine.take_finished())
        return len(rids)

    def _finish_now(self, rid: str, error: Exception | None = None) -> None:
        sink = self._sinks.pop(rid)
        item = error or abort_output(rid, sink.prompt_ids, self.engine.weight_version)
        self._post([(sink, item)])

    def _fail_all(self, error: Exception) -> None:
        for rid in list(self._sinks):
            if rid not in self._held:
                self.engine.abort_request(rid)
            self._held.pop(rid, None)
            self._finish_now(rid, RuntimeError(f"engine step failed: {error}"))

    def _pause(self, mode: str) -> None:
        if mode == "abort":
            self._abort(lambda rid: True)
            self._drain()
        self.paused = True

    def _drain(self) -> None:
        """Step until the engine has reported every (aborted) request; nothing is left to generate."""
        for _ in range(_MAX_DRAIN_STEPS):
            if not self.engine.has_unfinished_requests():
                return
            self._deliver(self.engine.step())
        logger.warning("engine still has unfinished requests after %d drain steps", _MAX_DRAIN_STEPS)

    def _continue(self) -> None:
        self.paused = False
        self._admit_held()

    def _admit_held(self) -> None:
        if self.paused or self.released:
            return
        held, self._held = self._held, {}
        for rid, (req, _) in held.items():
            try:
                self.engine.add_request(req.prompt_ids, req.params, rid, stream=req.stream,
                                        return_routed_experts=req.return_routed_experts)
            except ValueError as e:
                self._finish_now(rid, e)

    def _next_expiry(self) -> float | None:
        """Seconds until the oldest held request's time is up (None: nothing held or no limit)."""
        if self.held_timeout is None or not self._held:
            return None
        _, oldest = next(iter(self._held.values()))
        return max(0.0, oldest + self.held_timeout - time.monotonic())

    def _expire_held(self) -> None:
        """Finish held requests that waited longer than `held_timeout` with `Unavailable`."""
        if self.held_timeout is None or not self._held:
            return
        now = time.monotonic()
        why = self.not_serving
        for rid, (_, since) in list(self._held.items()):
            if now - since >= self.held_timeout:
                del self._held[rid]
                self._finish_now(rid, Unavailable(
                    f"request {rid} waited {now - since:.0f} s and was not served (engine {why}) "
                    f"(the server's held-request timeout is {self.held_timeout:g} s: --held-request-timeout)"))

    def _refresh_stats(self) -> None:
        stats = dict(self.engine.stats())
        stats.update(num_held=len(self._held), num_in_flight=len(self._sinks), paused=self.paused,
                     step_seconds=self.step_seconds, busy_periods=self.busy_periods, busy_since=self.busy_since,
                     idle_since=self.idle_since,
                     released=sorted(self.released), weight_version=self.engine.weight_version,
                     updated_at=time.time())
        self.stats = stats
