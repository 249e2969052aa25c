"""Train groups: N Ray actors, one per rank, that form one torch.distributed group around a train worker.

`ActorWorker` holds a rank of the policy (`temper.train.Actor`) and is also the sending end of the
weight sync; `CriticWorker` holds a rank of the PPO critic in a group of its own. Both start the same
way (`TrainWorker`): rank 0 picks a free port on its node, every rank joins
``init_process_group`` (gloo on CPU, NCCL on GPU, or --distributed-backend) and then builds its model.

`TrainGroup` is the driver's handle: each call runs the method on every rank (they work in lockstep:
FSDP's collectives), and returns rank 0's result. Big arguments (the rollout batch) go into Ray's
object store once and every rank reads them from there.

Each rank answers `progress` (what it works on now: `temper.train.work_progress`) in a Ray concurrency
group of its own (`PROGRESS_GROUP`), so the driver's live line can ask while a long call (train, weight
sync, save) runs; every other method keeps running one at a time, on one thread of the rank.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator
from typing import Any

from temper.cluster.placement import WORKER_ENV, Placement, ResourcePlan, stop_workers
from temper.cluster.remote import WorkerId, enable_stack_dumps, wait_for

logger = logging.getLogger(__name__)
PROGRESS_GROUP = "progress"


class TrainWorker:
    """One rank: joins the group, builds its model (`build`), moves it on and off the device."""

    ROLE = "train"

    def __init__(self, cfg, rank: int, world_size: int, device: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.cfg, self.rank, self.world_size, self.device = cfg, rank, world_size, device
        self.model: Any = None
        self.id = enable_stack_dumps(cfg, f"{self.ROLE} rank {rank}")

    def identity(self) -> WorkerId:
        """Who this rank is, for the driver's error messages and stack dumps."""
        return self.id

    def rendezvous_port(self) -> int:
        """Rank 0: a free port on this node for the process group's store."""
        from temper.cluster.engine_group import free_port

        return free_port("0.0.0.0")

    def init(self, master_address: str, master_port: int) -> None:
        import torch
        import torch.distributed as dist

        if self.device == "cuda":
            torch.cuda.set_device(0)  # Ray made exactly this bundle's GPU visible
        backend = self.cfg.distributed_backend or ("nccl" if self.device == "cuda" else "gloo")
        dist.init_process_group(
            backend,
            init_method=f"tcp://{master_address}:{master_port}",
            rank=self.rank,
            world_size=self.world_size,
            timeout=datetime.timedelta(minutes=self.cfg.distributed_timeout_minutes),
        )
        self.model = self.build()

    def build(self) -> Any:
        raise NotImplementedError

    def load(self, path: str | None = None):
        return self.model.load(path)

    def offload(self) -> None:
        self.model.offload()

    def onload(self) -> None:
        self.model.onload()

    def progress(self):
        """What this rank works on now (a `WorkState`, None between stages or before the model is built).
        Called in `PROGRESS_GROUP`, beside the rank's running call."""
        progress = getattr(self.model, "progress", None)
        return progress.snapshot() if progress is not None else None

    def trim(self) -> None:
        """Give the GPU memory cached by this process's allocator but unused back to the device."""
        import torch

        if self.device == "cuda":
            torch.cuda.empty_cache()

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class ActorWorker(TrainWorker):
    """A rank of the policy: trains it, checkpoints it, sends its weights to the engines."""

    ROLE = "actor"

    def build(self) -> Any:
        from temper.train import Actor

        self.sender = None
        self.prepared = None
        return Actor(self.cfg)

    def train(self, rollout_id: int, batch) -> dict[str, float]:
        return self.model.train(rollout_id, batch)

    def prepare(self, rollout_id: int, batch, values) -> Any:
        """PPO: advantages and returns from the critic's values; kept here for `update`, and returned
        (rank 0) for the critic."""
        self.prepared = self.model.prepare(rollout_id, batch, values)
        return self.prepared if self.rank == 0 else None

    def update(self) -> dict[str, float]:
        data, self.prepared = self.prepared, None
        return self.model.update(data)

    def save(self, rollout_id: int, extra: dict) -> str:
        return str(self.model.save(rollout_id, extra=extra))

    def connect(self, spec) -> None:
        """Become this rank's end of the weight sync described by `spec` (a `SyncSpec`), leaving the
        previous one (formed again when an engine was restarted)."""
        from temper.cluster.weight_sync import WeightSender

        if self.sender is not None:
            self.sender.close()
        self.sender = WeightSender(spec, self.rank)

    def update_weights(self, version: int) -> dict[str, float]:
        progress = self.model.progress
        with progress.stage("sync", "weights", total=self.model.weight_bytes(), unit="bytes"):
            return self.sender.send(_counted(self.model.iter_weight_buckets(), progress), str(version))

    def first_step_metrics(self) -> dict[str, float]:
        """The metrics of the last `train`/`update`'s first optimizer step (the preflight reads them)."""
        return self.model.step_metrics[0] if self.model.step_metrics else {}

    def check_weights(self) -> int:
        with self.model.progress.stage("sync", "weight check"):
            return self.sender.check()

    def shutdown(self) -> None:
        if getattr(self, "sender", None) is not None:
            self.sender.close()
        super().shutdown()


def _counted(buckets, progress) -> Iterator:
    """The buckets, each counted into `progress` (bytes) once the sender asks for the next: sent."""
    for bucket in buckets:
        yield bucket
        progress.advance(sum(tensor.numel() * tensor.element_size() for _, tensor in bucket))


class CriticWorker(TrainWorker):
    """A rank of the PPO critic."""

    ROLE = "critic"

    def build(self) -> Any:
        from temper.train import Critic

        return Critic(self.cfg, lr=self.cfg.critic_lr)

    def compute_values(self, batch) -> Any:
        values = self.model.compute_values(batch)
        return values if self.rank == 0 else None

    def update(self, data) -> dict[str, float]:
        return self.model.update(data)

    def save(self, rollout_id: int) -> str:
        return str(self.model.save(rollout_id))


class TrainGroup:
    """The driver's handle on the ranks of one worker class (see the module docstring)."""

    def __init__(self, worker_cls: type, cfg, plan: ResourcePlan, placement: Placement):
        import ray

        self.cfg, self.placement = cfg, placement
        self.ROLE = worker_cls.ROLE
        self.workers = []
        self.ids: list[WorkerId] = []
        for rank in range(plan.train_ranks):
            share = plan.workers_in_bundle(rank)
            options: dict[str, Any] = {
                "num_cpus": fraction(share),
                "scheduling_strategy": placement.strategy(rank),
                "runtime_env": {"env_vars": WORKER_ENV},
            }
            if plan.device == "cuda":
                options["num_gpus"] = fraction(share)
            remote = ray.remote(concurrency_groups={PROGRESS_GROUP: 1})(worker_cls).options(**options)
            self.workers.append(remote.remote(cfg, rank, plan.train_ranks, plan.device, plan.threads))

    def start(self) -> list:
        """Join the process group and build the models; returns the refs to wait on."""
        timeout = self.cfg.ray_call_timeout
        self.ids = wait_for([w.identity.remote() for w in self.workers], [], f"starting the {self.ROLE} ranks", timeout)
        port = wait_for([self.workers[0].rendezvous_port.remote()], self.ids, f"{self.ROLE} rank 0's rendezvous port",
                        timeout)[0]
        address = self.placement.address(0)
        return [w.init.remote(address, port) for w in self.workers]

    def run(self, method: str, *args: Any) -> Any:
        """`method(*args)` on every rank; rank 0's result."""
        import ray

        args = tuple(a if isinstance(a, (int, float, str, type(None))) else ray.put(a) for a in args)
        refs = [getattr(w, method).remote(*args) for w in self.workers]
        return wait_for(refs, self.ids, f"{self.ROLE} {method}", self.cfg.ray_call_timeout)[0]

    def progress(self):
        """A Ray ref to rank 0's `TrainWorker.progress` (it answers while a long call runs); the caller waits
        for it as long as it likes."""
        return self.workers[0].progress.options(concurrency_group=PROGRESS_GROUP).remote()

    def load(self):
        return self.run("load")

    def offload(self) -> None:
        self.run("offload")

    def onload(self) -> None:
        self.run("onload")

    def trim(self) -> None:
        self.run("trim")

    def stop(self) -> None:
        stop_workers(self.workers, "shutdown", logging.DEBUG)
        self.workers = []


class ActorGroup(TrainGroup):
    def __init__(self, cfg, plan: ResourcePlan, placement: Placement):
        super().__init__(ActorWorker, cfg, plan, placement)

    def train(self, rollout_id: int, batch) -> dict[str, float]:
        return self.run("train", rollout_id, batch)

    def prepare(self, rollout_id: int, batch, values):
        return self.run("prepare", rollout_id, batch, values)

    def update(self) -> dict[str, float]:
        return self.run("update")

    def save(self, rollout_id: int, extra: dict) -> str:
        return self.run("save", rollout_id, extra)

    def connect(self, spec) -> None:
        self.run("connect", spec)

    def update_weights(self, version: int) -> dict[str, float]:
        return self.run("update_weights", version)

    def first_step_metrics(self) -> dict[str, float]:
        return self.run("first_step_metrics")

    def check_weights(self) -> int:
        refs = [w.check_weights.remote() for w in self.workers]
        return sum(wait_for(refs, self.ids, "actor check_weights", self.cfg.ray_call_timeout))


class CriticGroup(TrainGroup):
    def __init__(self, cfg, plan: ResourcePlan, placement: Placement):
        super().__init__(CriticWorker, cfg, plan, placement)

    def compute_values(self, batch):
        return self.run("compute_values", batch)

    def update(self, data) -> dict[str, float]:
        return self.run("update", data)

    def save(self, rollout_id: int) -> str:
        return self.run("save", rollout_id)


def fraction(share: int) -> float:
    """Each of `share` workers' part of a bundle's one CPU (and GPU), rounded down for Ray."""
    return int(10_000 / max(share, 1)) / 10_000
