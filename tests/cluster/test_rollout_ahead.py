"""`RolloutsAhead` with a stand-in rollout manager: order, the depth bound, pauses, errors, and the
data-source snapshot taken after each rollout."""

import threading
import time

import pytest

from temper.cluster import RolloutsAhead


class FakeSource:
    def __init__(self):
        self.offset = 0

    def state_dict(self):
        return {"offset": self.offset}


class FakeRollout:
    """generate(k) takes `delay` seconds and records when it started; fails at `fail_at`."""

    def __init__(self, delay=0.01, fail_at=None):
        self.delay, self.fail_at = delay, fail_at
        self.data_source = FakeSource()
        self.started: list[int] = []
        self.running = threading.Event()
        self.last_metrics = {}

    def generate(self, k):
        self.started.append(k)
        self.running.set()
        time.sleep(self.delay)
        self.running.clear()
        if k == self.fail_at:
            raise ValueError(f"rollout {k} failed")
        self.data_source.offset += 4
        self.last_metrics = {"rollout/id": k}
        return f"batch-{k}"


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_rollouts_come_in_order_with_their_metrics_and_state():
    rollout = FakeRollout()
    ahead = RolloutsAhead(rollout, start=3, stop=6, depth=1)
    got = [ahead.get(k) for k in range(3, 6)]
    ahead.close()
    assert [g.batch for g in got] == ["batch-3", "batch-4", "batch-5"]
    assert [g.metrics for g in got] == [{"rollout/id": k} for k in range(3, 6)]
    assert [g.data_state for g in got] == [{"offset": 4}, {"offset": 8}, {"offset": 12}]


@pytest.mark.parametrize("depth", [1, 2])
def test_generation_runs_at_most_depth_rollouts_ahead(depth):
    rollout = FakeRollout()
    ahead = RolloutsAhead(rollout, start=0, stop=10, depth=depth)
    wait_until(lambda: len(rollout.started) == depth)
    time.sleep(0.1)
    assert rollout.started == list(range(depth))  # nothing past the bound before training takes one
    ahead.get(0)
    wait_until(lambda: len(rollout.started) == depth + 1)
    time.sleep(0.1)
    assert rollout.started == list(range(depth + 1))
    ahead.close()


def test_paused_waits_for_the_rollout_in_flight_and_starts_none():
    rollout = FakeRollout(delay=0.2)
    ahead = RolloutsAhead(rollout, start=0, stop=5, depth=2)
    rollout.running.wait(5)
    with ahead.paused():
        assert not rollout.running.is_set()  # the one in flight finished before the block
        started = list(rollout.started)
        time.sleep(0.3)
        assert rollout.started == started  # and none started inside it
    ahead.get(0)
    ahead.close()


def test_a_failed_rollout_raises_in_get():
    ahead = RolloutsAhead(FakeRollout(fail_at=1), start=0, stop=3, depth=1)
    assert ahead.get(0).batch == "batch-0"
    with pytest.raises(ValueError, match="rollout 1 failed"):
        ahead.get(1)
    ahead.close()
