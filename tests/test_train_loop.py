"""train.py's loop against a stand-in cluster (no Ray, no models): for each outcome of the memory plan,
which memory moves happen, in which order around training and the weight sync, and that each is timed
apart from rollout, train and sync."""

import io

import pytest

from temper.cluster.memory_plan import ALL_TAGS, MemoryPlan
from temper.command_line import parse_config
from temper.observe import RunLog
from temper.quickstart import load_driver

MOVES = ("time/release_engine", "time/onload_train", "time/offload_train", "time/resume_engine")


class Engines:
    def __init__(self, calls: list):
        self.calls = calls

    def release_memory(self, tags):
        self.calls.append(("release", tuple(tags)))

    def resume_memory(self, tags):
        self.calls.append(("resume", tuple(tags)))


class Rollout:
    last_metrics: dict = {}
    last_samples: list = []  # RolloutManager's: the report's sample rows (none here)

    def __init__(self, calls: list):
        self.calls = calls

    def generate(self, rollout_id):
        self.calls.append(("generate", rollout_id))


class StandInCluster:
    """What train.py calls on a `Cluster`, recorded in order."""

    def __init__(self, memory: MemoryPlan):
        self.memory, self.calls = memory, []
        self.engines, self.rollout = Engines(self.calls), Rollout(self.calls)

    def resume(self):
        return 0

    def train(self, rollout_id, batch):
        self.calls.append(("train", rollout_id))
        return {}

    def update_weights(self, version):
        self.calls.append(("sync", version))
        return {"sync/weight_version": float(version)}

    def offload_train(self):
        self.calls.append(("offload",))

    def onload_train(self):
        self.calls.append(("onload",))

    def trim_train(self):
        self.calls.append(("trim",))


def run(memory: MemoryPlan, tmp_path) -> tuple[list, list[dict]]:
    cfg = parse_config(["--rollout-batch-size", "2", "--num-rollout", "1", "--run-dir", str(tmp_path)])
    cluster = StandInCluster(memory)
    with RunLog(cfg, stream=io.StringIO()) as log:
        steps = load_driver("train").train(cfg, cluster, log)
    return cluster.calls, steps


@pytest.mark.parametrize(
    "outcome, offload_train, release, start, step",
    [
        ("resident", False, (), [("sync", 0)], [("generate", 0), ("train", 0), ("sync", 1)]),
        (
            "release_kv_cache", False, ("kv_cache",),
            [("sync", 0), ("trim",), ("resume", ("kv_cache",))],
            [("generate", 0), ("release", ("kv_cache",)), ("train", 0), ("sync", 1), ("trim",),
             ("resume", ("kv_cache",))],
        ),
        (
            "offload", True, ALL_TAGS,
            [("resume", ("weights",)), ("sync", 0), ("offload",), ("resume", ("kv_cache",))],
            [("generate", 0), ("release", ALL_TAGS), ("onload",), ("train", 0), ("resume", ("weights",)), ("sync", 1),
             ("offload",), ("resume", ("kv_cache",))],
        ),
    ],
)  # fmt: skip
def test_the_loop_moves_what_the_plan_says(tmp_path, outcome, offload_train, release, start, step):
    calls, steps = run(MemoryPlan(offload_train, release, outcome), tmp_path)
    assert calls == start + step
    record = steps[0]
    assert {"time/rollout", "time/train", "time/sync"} <= set(record)
    moved = {"time/release_engine": bool(release), "time/onload_train": offload_train,
             "time/offload_train": offload_train, "time/resume_engine": bool(release)}  # fmt: skip
    assert {name: name in record for name in MOVES} == moved


def test_save_and_eval_are_phases_of_their_step_and_the_first_eval_is_shown_not_timed(tmp_path):
    """The checkpoint and the evaluation get a live line and a time of their own (time/save, time/eval); the
    evaluation before training is shown live too, but counted into no step."""
    import time

    cfg = parse_config(["--rollout-batch-size", "2", "--num-rollout", "1", "--run-dir", str(tmp_path), "--save",
                        str(tmp_path / "ckpt"), "--save-interval", "1", "--eval-interval", "1",
                        "--eval-prompt-data", "sums", str(tmp_path / "sums.jsonl")])  # fmt: skip
    cluster = StandInCluster(MemoryPlan(False, (), "resident"))
    shown = []

    def save(rollout_id):
        cluster.calls.append(("save", rollout_id))
        time.sleep(0.05)

    def evaluate(rollout_id):
        cluster.calls.append(("eval", rollout_id))
        time.sleep(0.05)
        return {"eval/sums": 0.5}

    cluster.save, cluster.rollout.eval = save, evaluate
    with RunLog(cfg, stream=io.StringIO()) as log:
        phase = log.live.phase
        log.live.phase = lambda name: (shown.append(name), phase(name))[1]
        steps = load_driver("train").train(cfg, cluster, log)
    assert cluster.calls == [("sync", 0), ("eval", 0), ("generate", 0), ("train", 0), ("save", 0), ("sync", 1),
                             ("eval", 0)]  # fmt: skip
    assert shown == ["eval", "rollout", "train", "save", "sync", "eval"]
    record = steps[0]
    assert record["time/save"] >= 0.05 and 0.05 <= record["time/eval"] < 0.1  # the first eval is in no step
