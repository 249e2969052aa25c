"""Bounded waits on Ray workers: a call past --ray-call-timeout stops with an error naming the operation
and the stuck worker, whose stacks (every thread's) land in <run dir>/stacks/; empty stack files go."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from temper.cluster.remote import RemoteTimeout, enable_stack_dumps, remove_empty_stack_files, wait_for

ray = pytest.importorskip("ray")


class Sleeper:
    def __init__(self, cfg, name):
        self.id = enable_stack_dumps(cfg, name)

    def identity(self):
        return self.id

    def nap(self, seconds: float) -> float:
        time.sleep(seconds)  # the frame the stack dump must show
        return seconds


@pytest.fixture(scope="module")
def local_ray():
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test folders are not importable packages
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_stuck_call_is_named_with_its_stacks_and_a_quick_one_returns(tmp_path, local_ray):
    cfg = SimpleNamespace(run_dir=str(tmp_path))
    workers = [ray.remote(Sleeper).options(num_cpus=0).remote(cfg, f"actor rank {r}") for r in range(2)]
    ids = ray.get([w.identity.remote() for w in workers])
    assert wait_for([w.nap.remote(0.01) for w in workers], ids, "actor nap", timeout_s=60) == [0.01, 0.01]
    started = time.monotonic()
    with pytest.raises(RemoteTimeout) as err:
        wait_for([workers[0].nap.remote(0.01), workers[1].nap.remote(30)], ids, "actor train", timeout_s=1.0)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert message.startswith("actor train: actor rank 1 (pid ") and "within 1 s (--ray-call-timeout)" in message
    stack_file = tmp_path / "stacks" / "actor-rank-1.txt"
    assert str(stack_file) in message and "actor rank 0" not in message
    assert "nap" in stack_file.read_text()  # the stuck worker's own frame
    for w in workers:
        ray.kill(w)
    remove_empty_stack_files(cfg)
    assert sorted(p.name for p in (tmp_path / "stacks").iterdir()) == ["actor-rank-1.txt"]  # rank 0's was empty


def test_no_run_dir_no_stack_files_and_no_timeout_waits(local_ray):
    cfg = SimpleNamespace(run_dir=None)
    worker = ray.remote(Sleeper).options(num_cpus=0).remote(cfg, "engine pid 1")
    ident = ray.get(worker.identity.remote())
    assert ident.stack_file is None
    assert wait_for([worker.nap.remote(0.2)], [ident], "engine nap", timeout_s=None) == [0.2]
    ray.kill(worker)
