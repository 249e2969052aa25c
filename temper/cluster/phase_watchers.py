"""What the live line of each long phase of a run shows (`temper.observe.live`), and where it reads it.

- rollout and eval: the engines' ``/v1/loads`` counters (`EngineWatcher`): samples finished of the
  rollout's batch (of the eval datasets' samples), tokens a second, a bound on the time left;
- train, sync and save: rank 0 of the train groups (`TrainWatcher`): the stage it works on (reference or old
  log-probs, optimizer step k of n, the weights sent, the weight check, a checkpoint, the Hugging Face
  export), the micro-batches of the stage done of its total with the tokens a second they took, or the
  bytes of weights sent of the total.

Rank 0 answers through a Ray call that runs beside its long one (`train_group.PROGRESS_GROUP`), read from
the display's thread with a bounded wait; nothing is asked of the ranks between two redraws, and a rank's
training loop only counts (`temper.train.work_progress`), so the numbers trained are the same with or
without a terminal.
"""

from __future__ import annotations

from typing import Any

from temper.observe.live import EngineWatcher, Progress
from temper.rollout.router_flags import engine_api_key

WAIT_S = 0.5
"""Longest wait for rank 0's answer per redraw; a late answer is shown at the next one."""


def watch_phases(cfg, cluster, log, eval_totals: bool = False) -> None:
    """Give `log`'s live line a watcher for each long phase the cluster runs. `eval_totals`: the eval is
    temper's eval rollout, whose samples are known in advance (a custom one's are not)."""
    groups = [g for g in (getattr(cluster, "actor", None), getattr(cluster, "critic", None)) if g is not None]
    for phase in ("train", "sync", "save"):
        if groups:
            log.live.watch(phase, lambda phase=phase: TrainWatcher(groups, phase))
    engines = getattr(cluster, "engines", None)
    if engines is None or not getattr(engines, "urls", None):
        return
    router = getattr(getattr(cluster, "rollout", None), "router", None)
    via_router = router is not None and engine_api_key(cfg) is not None  # its /v1/loads has every engine's entries

    def urls() -> list[str]:
        return [router.url] if via_router else list(engines.urls)

    total = cfg.rollout_batch_size * cfg.n_samples_per_prompt
    log.live.watch("rollout", lambda: EngineWatcher(urls(), total, cfg.rollout_max_response_len))
    log.live.watch("eval", lambda: EngineWatcher(urls(), *_eval_totals(cfg, eval_totals)))


def _eval_totals(cfg, known: bool) -> tuple[int | None, int | None]:
    if not known:
        return None, None
    from temper.rollout.evaluation import eval_work

    return eval_work(cfg)


class TrainWatcher:
    """Phase `phase`'s progress from rank 0 of `groups` (the actor's, then the critic's): the first whose
    current stage belongs to the phase. Each call asks every group at most once at a time and waits at most
    `wait_s` in all; a question still unanswered is kept for the next call, and the last answer shown."""

    def __init__(self, groups: list, phase: str, wait_s: float = WAIT_S):
        self.groups, self.phase, self.wait_s = list(groups), phase, wait_s
        self.asked: dict[int, Any] = {}  # group index -> its pending progress ref
        self.last: dict[int, Any] = {}  # group index -> its last answer (a WorkState or None)

    def __call__(self) -> Progress | None:
        import ray

        for i, group in enumerate(self.groups):
            if i not in self.asked:
                self.asked[i] = group.progress()
        refs = {ref: i for i, ref in self.asked.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.wait_s)
        for ref in ready:
            i = refs[ref]
            del self.asked[i]
            try:
                self.last[i] = ray.get(ref)
            except Exception:  # noqa: BLE001 -- a rank that fails its call: the run's own wait reports it
                self.last[i] = None
        states = [self.last.get(i) for i in range(len(self.groups))]
        state = next((s for s in states if s is not None and s.kind == self.phase), None)
        return describe(state, ranks=len(self.groups[0].workers)) if state is not None else None


def describe(state, ranks: int = 1) -> Progress:
    """A rank's `WorkState` as the live line's `Progress`: micro-batches with tokens a second (rank 0's own,
    said so when there are more ranks), megabytes with MB a second, or the stage alone."""
    seconds = max(state.seconds, 1e-6)
    if state.unit == "micro-batches":
        rate = state.tokens / seconds if state.tokens else None  # none yet: no rate to show
        return Progress(done=state.done, total=state.total, unit="micro-batches", stage=state.stage, rate=rate,
                        rate_unit="tok/s" if ranks == 1 else "tok/s on rank 0")  # fmt: skip
    if state.unit == "bytes":
        mb = 1e6
        rate = state.done / mb / seconds if state.done else None
        return Progress(done=state.done / mb, total=state.total / mb if state.total else None, unit="MB",
                        stage=state.stage, rate=rate, rate_unit="MB/s")  # fmt: skip
    return Progress(stage=state.stage)
