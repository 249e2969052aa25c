"""Where a run's workers go: the resource plan (before Ray starts) and the placement group (after).

One placement group holds one bundle per GPU that the run asks for: the actor's
`--actor-num-nodes x --actor-num-gpus-per-node` bundles first (a train rank each; the PPO critic's
rank i shares bundle i with actor rank i), then `--rollout-num-gpus` bundles for the engines
(`--rollout-num-gpus-per-engine` consecutive bundles per engine). With `--colocate` the engines sit
on the actor's bundles instead. Bundles are ordered by (node, GPU id), so rank r always gets the
r-th GPU and an engine's GPUs are neighbours. An engine of N > 1 GPUs is tensor-parallel: its actor
(tensor-parallel rank 0) sits on its first bundle and starts ranks 1..N-1 as its own processes on the
GPUs of the others, which the placement group keeps for it (`EngineWorker`).

GPU machines: a bundle is `{"GPU": 1, "CPU": 1}`; the workers sharing a bundle split its GPU
(fractional `num_gpus`), so Ray sets each one's `CUDA_VISIBLE_DEVICES` to that bundle's GPU. Asking
for more GPUs than the Ray cluster has stops the run before any worker starts.

CPU-only machines (no CUDA on the local node, or no "GPU" resource in the Ray cluster): the GPU counts
keep their meaning as *worker counts*. Each GPU asked for becomes one CPU slot (a bundle
`{"CPU": 1}`) holding one worker process per role, exactly where a GPU would have been; torch in
each worker runs `cores // processes` threads (at least 1). The run may use at most
`CPU_OVERSUBSCRIPTION` (4) worker processes per core; beyond that it stops at once with a one-line
error, since the processes would only fight over the cores.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from temper.config import ConfigError

logger = logging.getLogger(__name__)

CPU_OVERSUBSCRIPTION = 4
"""Worker processes allowed per CPU core when GPU counts become CPU workers."""

WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
"""Environment of every worker process (no tokenizer thread pools, no progress bars in the driver's log)."""


@dataclass(frozen=True)
class ResourcePlan:
    """What the run asks of the cluster, checked before any worker starts.

    device: "cuda" or "cpu" (every worker of the run uses it). train_ranks: actor ranks (each one
    bundle). critic: whether each train bundle also holds a critic rank (PPO). num_engines: engines
    temper starts (0 with --rollout-external-engine-addrs or --debug-train-only). gpus_per_engine:
    each engine's GPUs, i.e. its tensor-parallel ranks (each a process). engine_bundles: bundle
    indices of each engine. threads: torch threads per worker process on CPU.
    """

    device: str
    train_ranks: int
    critic: bool
    num_engines: int
    gpus_per_engine: int
    colocate: bool
    num_bundles: int
    engine_bundles: list[list[int]] = field(default_factory=list)
    threads: int = 1

    @property
    def train_bundles(self) -> list[int]:
        return list(range(self.train_ranks))

    @property
    def num_processes(self) -> int:
        """Worker processes of the run: train ranks, and every engine's tensor-parallel ranks."""
        return self.train_ranks * (2 if self.critic else 1) + self.num_engines * self.gpus_per_engine

    def workers_in_bundle(self, bundle: int) -> int:
        """How many worker processes share `bundle` (they split its GPU)."""
        train = (2 if self.critic else 1) if bundle < self.train_ranks else 0
        engines = sum(bundle in b for b in self.engine_bundles)
        return train + engines

    def describe(self) -> str:
        unit = "GPU" if self.device == "cuda" else "CPU slot"
        where = "colocated on the train bundles" if self.colocate else "on their own bundles"
        critic = " + critic" if self.critic else ""
        return (
            f"{self.num_bundles} {unit}(s): {self.train_ranks} train rank(s){critic}, {self.num_engines} engine(s) "
            f"{where}; {self.num_processes} worker processes"
        )


def plan_resources(cfg, *, cuda_available: bool, cluster_gpus: float | None, cores: int) -> ResourcePlan:
    """The plan for validated `cfg`; ConfigError (one line) when it cannot fit.

    cuda_available: whether this node has CUDA. cluster_gpus: the Ray cluster's "GPU" resource when
    joining an existing cluster (None for a local head, which gets this node's GPUs). cores: CPU
    cores of this node (the local head's capacity on CPU).
    """
    device = "cuda" if (cluster_gpus if cluster_gpus is not None else cuda_available) else "cpu"
    actor_gpus = cfg.actor_num_gpus or (1 if device == "cpu" else 0)  # "0 GPUs" on a CPU: one CPU worker
    if actor_gpus < 1:
        raise ConfigError("--actor-num-gpus-per-node 0: the trainer needs at least one GPU on a machine with GPUs")
    train_ranks = 0 if cfg.debug_rollout_only else actor_gpus
    num_engines, per_engine = _engine_count(cfg, actor_gpus if cfg.colocate else cfg.rollout_num_gpus or 0)
    if cfg.colocate:
        num_bundles = actor_gpus
        first_engine_bundle = 0
    else:
        num_bundles = train_ranks + num_engines * per_engine
        first_engine_bundle = train_ranks
    engine_bundles = [
        list(range(first_engine_bundle + i * per_engine, first_engine_bundle + (i + 1) * per_engine))
        for i in range(num_engines)
    ]
    plan = ResourcePlan(
        device=device,
        train_ranks=train_ranks,
        critic=cfg.use_critic and train_ranks > 0,
        num_engines=num_engines,
        gpus_per_engine=per_engine,
        colocate=cfg.colocate,
        num_bundles=num_bundles,
        engine_bundles=engine_bundles,
    )
    if device == "cuda":
        _check_gpus(cfg, plan, cluster_gpus, cuda_available)
        return plan
    limit = CPU_OVERSUBSCRIPTION * cores
    if plan.num_processes > limit:
        raise ConfigError(
            f"no GPU here, so each GPU asked for becomes a CPU worker: {plan.describe()}, but {cores} core(s) "
            f"allow at most {limit} ({CPU_OVERSUBSCRIPTION} per core); lower --actor-num-gpus-per-node / "
            f"--rollout-num-gpus"
        )
    return ResourcePlan(**{**plan.__dict__, "threads": max(1, cores // max(plan.num_processes, 1))})


def _engine_count(cfg, gpus: int) -> tuple[int, int]:
    """(engines temper starts on `gpus` GPUs, GPUs per engine)."""
    per_engine = cfg.rollout_num_gpus_per_engine
    if cfg.debug_train_only or cfg.rollout_external_engine_addrs:
        return 0, per_engine
    if per_engine > cfg.num_gpus_per_node:
        raise ConfigError(
            f"--rollout-num-gpus-per-engine {per_engine} exceeds --num-gpus-per-node {cfg.num_gpus_per_node}: "
            f"an engine must fit on one node"
        )
    if gpus == 0:
        raise ConfigError(
            "no rollout engines: give --rollout-num-gpus N (disaggregated engines), --colocate (engines on the "
            "actor's GPUs) or --rollout-external-engine-addrs HOST:PORT ... (engines started elsewhere)"
        )
    return gpus // per_engine, per_engine


def _check_gpus(cfg, plan: ResourcePlan, cluster_gpus: float | None, cuda_available: bool) -> None:
    if cluster_gpus is None:
        import torch

        have, where = torch.cuda.device_count() if cuda_available else 0, "this machine"
    else:
        have, where = int(cluster_gpus), "the Ray cluster"
    if plan.num_bundles > have:
        if cfg.colocate:
            ask = f"--actor-num-nodes {cfg.actor_num_nodes} x --actor-num-gpus-per-node {cfg.actor_num_gpus_per_node} (colocated)"
        else:
            ask = (
                f"{plan.train_ranks} for training (--actor-num-nodes x --actor-num-gpus-per-node) + "
                f"{plan.num_engines * plan.gpus_per_engine} for engines (--rollout-num-gpus)"
            )
        raise ConfigError(
            f"the run asks for {plan.num_bundles} GPUs ({ask}) but {where} has {have}; lower the counts, or join a "
            f"larger cluster (ray start on each node, then RAY_ADDRESS=HEAD:6379)"
        )


# ---- Ray --------------------------------------------------------------------------------------------


def local_resources() -> tuple[bool, int]:
    """(CUDA available on this node, CPU cores of this node)."""
    import torch

    return torch.cuda.is_available(), len(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity"
    ) else os.cpu_count() or 1


def start_ray(plan_cores: int) -> bool:
    """Connect to Ray: the running instance, `RAY_ADDRESS`'s cluster, or a new local head sized for
    `plan_cores` logical CPUs. Returns whether this call started or connected (so must shut down)."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return True
    ray_logger = logging.getLogger(TOKEN_NOTICE_LOGGER)
    quiet = DropTokenNotice()
    ray_logger.addFilter(quiet)
    try:
        ray.init(num_cpus=plan_cores, include_dashboard=False, log_to_driver=True, configure_logging=False)
    finally:
        ray_logger.removeFilter(quiet)
    return True


TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


class DropTokenNotice(logging.Filter):
    """Drops the notice Ray (2.59+) logs at every new local head: "Token authentication is enabled for
    this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out...". Token authentication stays on (Ray's
    default); only the line goes, and only while temper starts its own head (a cluster the user started
    and names in RAY_ADDRESS is joined as Ray decides, notice included). Ray's own switch, RAY_AUTH_MODE=token
    set explicitly, silences it too but is read when ray is imported, which is before start_ray runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def ray_cluster_gpus() -> float | None:
    """The Ray cluster's GPU count when joining one (RAY_ADDRESS or an initialized Ray), else None."""
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0))
    return None


@dataclass
class Placement:
    """The placement group of a run. Bundle i (as the plan numbers them) is the group's bundle
    `order[i]`, so that bundles go by (node, GPU id); `hosts[i]` / `gpu_ids[i]` say where it is."""

    group: Any
    order: list[int]
    hosts: list[str]
    gpu_ids: list[int | None]

    @property
    def single_node(self) -> bool:
        return len(set(self.hosts)) <= 1

    def address(self, bundle: int) -> str:
        """The address other workers reach bundle `bundle`'s workers at (loopback on one node)."""
        return "127.0.0.1" if self.single_node else self.hosts[bundle]

    def strategy(self, bundle: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=self.order[bundle])

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.group)


def create_placement(plan: ResourcePlan, timeout_s: float = 120.0) -> Placement:
    """One placement group with the plan's bundles, ordered by (node, GPU id)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"GPU": 1, "CPU": 1} if plan.device == "cuda" else {"CPU": 1}
    group = placement_group([dict(bundle) for _ in range(plan.num_bundles)], strategy="PACK")
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise ConfigError(
            f"Ray could not reserve {plan.describe()} within {timeout_s:.0f}s; free: {ray.available_resources()}"
        )
    where = _bundle_locations(group, plan)
    order = sorted(range(plan.num_bundles), key=lambda i: (where[i][0], where[i][1] if where[i][1] is not None else i))
    return Placement(group, order, [where[i][0] for i in order], [where[i][1] for i in order])


def stop_workers(workers: list, method: str, level: int = logging.WARNING) -> None:
    """Call each Ray worker's `method` (its own orderly stop; 60 s each), then kill it. A worker that
    fails to stop is logged at `level` and killed all the same (a dead one is stopped already)."""
    import ray

    for worker in workers:
        try:
            ray.get(getattr(worker, method).remote(), timeout=60)
        except Exception as e:  # noqa: BLE001 -- any failure: kill it anyway
            logger.log(level, "worker %s failed: %s", method, e)
        ray.kill(worker)


def _bundle_locations(group: Any, plan: ResourcePlan) -> list[tuple[str, int | None]]:
    """(node address, GPU id) of each bundle, from one short task per bundle (GPU) or the table (CPU)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if plan.device != "cuda":
        table = ray.util.placement_group_table(group)
        nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        return [(nodes.get(table["bundles_to_node_id"][i], "?"), None) for i in range(plan.num_bundles)]

    @ray.remote(num_gpus=0.01, num_cpus=0)
    def where() -> tuple[str, int]:
        return ray.util.get_node_ip_address(), int(ray.get_gpu_ids()[0])

    refs = [
        where.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)
        ).remote()
        for i in range(plan.num_bundles)
    ]
    return ray.get(refs)
