"""Which watcher each long phase's live line gets (temper/cluster/phase_watchers.py), and how a train rank's
state reads on it. The watchers against a real run: test_train_driver.py (every long phase)."""

from types import SimpleNamespace

from temper.cluster.phase_watchers import TrainWatcher, describe, watch_phases
from temper.observe.live import EngineWatcher, LiveProgress
from temper.train.work_progress import WorkState


def test_a_train_rank_s_stage_reads_as_micro_batches_with_tokens_a_second_or_megabytes():
    step = WorkState("train", "step 1/2", done=3, total=8, unit="micro-batches", tokens=6000, seconds=2.0)
    assert describe(step).describe() == "step 1/2, 3/8 micro-batches, 3.0k tok/s"
    assert describe(step, ranks=4).describe() == "step 1/2, 3/8 micro-batches, 3.0k tok/s on rank 0"
    starting = WorkState("train", "ref log-probs", done=0, total=8, unit="micro-batches", seconds=0.1)
    assert describe(starting).describe() == "ref log-probs, 0/8 micro-batches"  # no rate before a micro-batch is done
    weights = WorkState("sync", "weights", done=600_000_000, total=1_200_000_000, unit="bytes", seconds=0.5)
    assert describe(weights).describe() == "weights, 600/1200 MB, 1.2k MB/s"
    tiny = WorkState("sync", "weights", done=850_000, total=1_700_000, unit="bytes", seconds=0.02)
    assert describe(tiny).describe() == "weights, 0.8/1.7 MB, 42 MB/s"
    assert describe(WorkState("save", "actor checkpoint", seconds=3.0)).describe() == "actor checkpoint"


def test_each_long_phase_gets_its_watcher():
    live = LiveProgress(terminal=False)
    log = SimpleNamespace(live=live)
    actor = SimpleNamespace(workers=[object()])
    engines = SimpleNamespace(urls=["http://127.0.0.1:9"])
    cfg = SimpleNamespace(rollout_batch_size=4, n_samples_per_prompt=8, rollout_max_response_len=16,
                          engine=SimpleNamespace(sglang={}))  # fmt: skip
    watch_phases(cfg, SimpleNamespace(actor=actor, critic=None, engines=engines, rollout=None), log)
    assert set(live.watchers) == {"rollout", "eval", "train", "sync", "save"}
    for phase in ("train", "sync", "save"):
        watcher = live.watchers[phase]()
        assert isinstance(watcher, TrainWatcher) and watcher.phase == phase and watcher.groups == [actor]
    rollout, evaluation = live.watchers["rollout"](), live.watchers["eval"]()
    try:
        assert isinstance(rollout, EngineWatcher) and (rollout.total, rollout.max_tokens) == (32, 16)
        assert (evaluation.total, evaluation.max_tokens) == (None, None)  # a custom eval: its samples are unknown
    finally:
        rollout.close()
        evaluation.close()
    debug_rollout_only = LiveProgress(terminal=False)
    watch_phases(cfg, SimpleNamespace(actor=None, critic=None, engines=engines, rollout=None),
                 SimpleNamespace(live=debug_rollout_only))  # fmt: skip
    assert set(debug_rollout_only.watchers) == {"rollout", "eval"}
