"""slime's default rollout function: `generate_rollout(args, rollout_id, data_source, evaluation=False)`.

Training (`DynamicSampler`): pull `--over-sampling-batch-size` prompt groups at a time from
`data_source.get_samples`, generate and score each group as one task (all its samples concurrently,
at most `sglang_server_concurrency × num_engines` generate calls in flight in the process), judge
each finished group with `--dynamic-sampling-filter-path` (dropped groups are counted per reason),
and pull more whenever the groups kept plus those in flight fall below `--rollout-batch-size`. Once
enough groups are kept, abort the rest (`/abort_request` abort_all on every engine until every task
returned). With `--partial-rollout` the unfinished and surplus groups go back to the data source
(`add_samples`), to be continued next rollout; without it they are dropped (counted).
Then `--rollout-sample-filter-path` and `--rollout-all-samples-process-path` run, and the kept groups
come back sorted by group_index as `RolloutFnTrainOutput(samples, metrics)`.

Evaluation (`evaluation=True`): see `evaluation.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from temper.rollout.async_loop import run
from temper.rollout.base_types import Group, RolloutFnEvalOutput, RolloutFnTrainOutput
from temper.rollout.evaluation import eval_rollout
from temper.rollout.filters import as_filter_output
from temper.rollout.generate import GenerateState, get_state
from temper.rollout.generate_and_rm import generate_and_rm_group
from temper.rollout.plugins import load_plugin
from temper.types import Sample

logger = logging.getLogger(__name__)

ABORT_POLL_S = 0.5  # between abort_all rounds while in-flight tasks drain
ABORT_TIMEOUT_S = 120.0  # after this, tasks still running are cancelled
MAX_DROPPED_FACTOR = 100  # a filter that drops this many × rollout_batch_size groups is rejecting everything


def generate_rollout(
    args: Any, rollout_id: int, data_source: Any, evaluation: bool = False
) -> RolloutFnTrainOutput | RolloutFnEvalOutput:
    """The default `--rollout-function-path` (synchronous; runs on the rollout loop)."""
    if evaluation:
        return run(eval_rollout(args, rollout_id))
    return run(generate_rollout_async(args, rollout_id, data_source))


async def generate_rollout_async(args: Any, rollout_id: int, data_source: Any) -> RolloutFnTrainOutput:
    """One training rollout (see the module docstring)."""
    state = await get_state(args)
    state.aborted = False
    sampler = DynamicSampler(args, rollout_id, data_source, state)
    output = await sampler.run()
    _run_hooks(args, output.samples, sampler.dropped, data_source)
    return output


class DynamicSampler:
    """The over-sampling / filtering / abort loop of one training rollout."""

    def __init__(self, args: Any, rollout_id: int, data_source: Any, state: GenerateState) -> None:
        self.args = args
        self.rollout_id = rollout_id
        self.data_source = data_source
        self.state = state
        self.target = int(args.rollout_batch_size)
        self.over = int(getattr(args, "over_sampling_batch_size", None) or self.target)
        path = getattr(args, "dynamic_sampling_filter_path", None)
        self.filter = load_plugin(path, flag="--dynamic-sampling-filter-path") if path else None
        self.pending: dict[asyncio.Task, Group] = {}
        self.kept: list[Group] = []
        self.dropped: list[Group] = []
        self.unfinished: list[Group] = []
        self.drop_reasons: Counter[str] = Counter()
        self.num_pulled = 0

    async def run(self) -> RolloutFnTrainOutput:
        start, start_unix = time.monotonic(), time.time()
        self.state.clock.reset()
        counters = await self.state.engine_counters()
        try:
            while len(self.kept) < self.target:
                self._refill()
                done, _ = await asyncio.wait(self.pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: _group_index(self.pending[t])):
                    self.pending.pop(task)
                    self._judge(task.result())
        except BaseException:
            await self._abort()
            raise
        leftovers = await self._abort() + self.kept[self.target :] + self.unfinished
        self.kept = sorted(self.kept[: self.target], key=_group_index)
        recycled = self._recycle(leftovers)
        metrics = self._metrics(time.monotonic() - start, len(leftovers), recycled) | self.state.clock.metrics(start)
        metrics |= engine_step_metrics(counters, await self.state.engine_counters(), start_unix)
        return RolloutFnTrainOutput(self.kept, metrics)

    def _refill(self) -> None:
        """Pull groups while the kept plus in-flight ones cannot reach the target."""
        while len(self.kept) + len(self.pending) < self.target:
            if len(self.dropped) > MAX_DROPPED_FACTOR * self.target:
                raise RuntimeError(
                    f"the dynamic sampling filter dropped {len(self.dropped)} groups ({dict(self.drop_reasons)}) "
                    f"while looking for {self.target}; it seems to reject every group"
                )
            groups = self.data_source.get_samples(self.over)
            if not groups:
                if self.pending:
                    return
                raise RuntimeError(
                    f"the data source ran out of prompts: {len(self.kept)} of --rollout-batch-size "
                    f"{self.target} groups kept"
                )
            self.num_pulled += len(groups)
            for group in groups:
                task = asyncio.create_task(generate_and_rm_group(self.args, group, self.state))
                self.pending[task] = group

    def _judge(self, group: Group) -> None:
        """Keep or drop one finished group (unfinished ones, e.g. aborted by an engine, wait aside)."""
        if any(s.status == Sample.Status.ABORTED for s in group):
            self.unfinished.append(group)
            return
        if self.filter is not None:
            verdict = as_filter_output(self.filter(self.args, group))
            short = len(self.kept) + len(self.pending) < self.target
            if not verdict.keep and not (verdict.keep_when_insufficient and short):
                self.dropped.append(group)
                self.drop_reasons[verdict.reason or "filtered"] += 1
                return
        self.kept.append(group)

    async def _abort(self) -> list[Group]:
        """Abort every in-flight group and wait for it; returns them (partially generated)."""
        if not self.pending:
            return []
        self.state.aborted = True
        drained: list[Group] = []
        deadline = time.monotonic() + ABORT_TIMEOUT_S
        while self.pending and time.monotonic() < deadline:
            await self.state.abort_engines()
            done, _ = await asyncio.wait(self.pending, timeout=ABORT_POLL_S)
            for task in done:
                drained.append(_result_or_input(task, self.pending.pop(task)))
        if self.pending:
            logger.warning(
                "%d groups did not finish within %.0fs of the abort; cancelled", len(self.pending), ABORT_TIMEOUT_S
            )
            for task in self.pending:
                task.cancel()
            await asyncio.gather(*self.pending, return_exceptions=True)
            drained += list(self.pending.values())
            self.pending.clear()
        for sample in (s for g in drained for s in g):
            if sample.status == Sample.Status.PENDING:
                sample.status = Sample.Status.ABORTED
        return drained

    def _recycle(self, groups: list[Group]) -> int:
        """With --partial-rollout, give whole groups back to the data source; returns how many."""
        if not groups:
            return 0
        if not getattr(self.args, "partial_rollout", False):
            logger.info(
                "rollout %d: %d unfinished or surplus groups dropped (no --partial-rollout)",
                self.rollout_id,
                len(groups),
            )
            return 0
        n = int(getattr(self.args, "n_samples_per_prompt", 1))
        whole = [g for g in groups if len(g) == n]
        if len(whole) < len(groups):
            logger.warning(
                "rollout %d: %d fanned-out groups cannot go back to the buffer; dropped",
                self.rollout_id,
                len(groups) - len(whole),
            )
        for sample in (s for g in whole for s in g):
            if sample.response_length:
                sample.metadata.setdefault("start_rollout_id", self.rollout_id)
        self.data_source.add_samples(sorted(whole, key=_group_index))
        return len(whole)

    def _metrics(self, seconds: float, num_leftover: int, num_recycled: int) -> dict[str, float]:
        metrics = {
            "rollout/generation_time": seconds,
            "rollout/num_groups_pulled": self.num_pulled,
            "rollout/num_groups_kept": len(self.kept),
            "rollout/num_groups_dropped": len(self.dropped),
            "rollout/num_groups_aborted_or_surplus": num_leftover,
            "rollout/num_groups_recycled": num_recycled,
        }
        metrics.update({f"rollout/dynamic_filter/drop_{reason}": count for reason, count in self.drop_reasons.items()})
        return metrics


def engine_step_metrics(
    before: dict[str, float] | None, after: dict[str, float] | None, start_unix: float | None = None
) -> dict[str, float]:
    """The engines' steps during the rollout (summed over engines) and the loop's ms a step: where a slow
    rollout's time went, engine or elsewhere. With the rollout's start (`start_unix`, Unix seconds): when,
    after it, the engines' last busy period began and when they last ran out of work (one period per engine
    when the rollout's requests all arrived before the first step)."""
    if before is None or after is None:
        return {}
    delta = {k: after[k] - before[k] for k in after}
    steps = delta["num_prefill_steps"] + delta["num_decode_steps"]
    out = {"rollout/engine_prefill_steps": delta["num_prefill_steps"], "rollout/engine_decode_steps": delta["num_decode_steps"],
           "rollout/engine_busy_s": delta["step_busy_s"], "rollout/engine_preemptions": delta["num_preemptions"]}
    if steps > 0:
        out["rollout/engine_ms_per_step"] = 1000 * delta["step_busy_s"] / steps
    if "num_busy_periods" in delta:
        out["rollout/engine_busy_periods"] = delta["num_busy_periods"]
    if start_unix is not None and after.get("busy_since", 0.0) >= start_unix:
        out["rollout/engine_busy_start_s"] = after["busy_since"] - start_unix
        if after.get("idle_since", 0.0) >= after["busy_since"]:
            out["rollout/engine_idle_at_s"] = after["idle_since"] - start_unix
    return out


def _run_hooks(args: Any, kept: list[Group], dropped: list[Group], data_source: Any) -> None:
    """`--rollout-sample-filter-path` on the kept groups (it may set remove_sample), then
    `--rollout-all-samples-process-path` on kept + filtered-out groups."""
    path = getattr(args, "rollout_sample_filter_path", None)
    if path:
        load_plugin(path, flag="--rollout-sample-filter-path")(args, kept)
    path = getattr(args, "rollout_all_samples_process_path", None)
    if path:
        load_plugin(path, flag="--rollout-all-samples-process-path")(args, kept + dropped, data_source)


def _group_index(group: Group) -> int:
    return min((s.group_index for s in group if s.group_index is not None), default=-1)


def _result_or_input(task: asyncio.Task, group: Group) -> Group:
    if task.cancelled() or task.exception() is not None:
        if not task.cancelled():
            logger.warning("a group failed while being aborted: %r", task.exception())
        return group
    return task.result()
