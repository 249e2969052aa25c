"""`Cluster`: what a driver loop talks to — train groups, engines, the rollout manager — started on Ray.

    with Cluster.start(cfg, data_source) as cluster:
        start = cluster.resume()
        batch = cluster.rollout.generate(rollout_id)
        metrics = cluster.actor.train(rollout_id, batch)
        cluster.save(rollout_id); cluster.update_weights(rollout_id + 1)

`start` checks the resource plan (placement.py) before anything runs, starts or joins Ray, reserves
one placement group, then starts the engines and the train ranks side by side (on GPU with
--colocate: engines first, their memory released while the trainer loads, then resumed). Colocated
runs get a memory plan (memory_plan.py: what the engines release during training, whether the trainer
leaves the GPUs outside it), logged in one line; `memory` holds it for the drivers. The
rollout manager runs in the driver process (with the data source the driver built before Ray
started: a bad prompt file costs nothing), behind temper's router in front of the engines (or the
router --sglang-router-ip/--sglang-router-port names, to which temper's engines are added).

Engine failures: with --use-fault-tolerance an `EngineDoctor` (fault_tolerance.py) restarts the engines
temper's router takes out; training, weight syncs and restarts take turns on `sync_lock`, so a restarted
engine gets weights of exactly the version the others serve. Without it, an engine found dead or stuck
in a weight sync stops the run with `EngineFailure` (its name, last log lines and the flag); one that
fails with a request in flight stops it through the router's error, which says the same.

Placement decides colocation; no worker class knows about it: the same `ActorWorker` and
`EngineWorker` run on shared or separate bundles.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Self

import httpx

from temper.cluster.engine_group import (
    EngineGroup,
    EngineSlot,
    builtin_server_settings,
    engine_dtype,
    engine_log_file,
    external_engine_urls,
    give_engines_a_key,
)
from temper.cluster.fault_tolerance import EngineDoctor
from temper.cluster.memory_plan import ALL_TAGS, MemoryPlan, plan_memory
from temper.cluster.preflight import Preflight
from temper.cluster.placement import (
    CPU_OVERSUBSCRIPTION,
    WORKER_ENV,
    Placement,
    ResourcePlan,
    create_placement,
    local_resources,
    plan_resources,
    ray_cluster_gpus,
    start_ray,
)
from temper.cluster.remote import remove_empty_stack_files, wait_for
from temper.cluster.train_group import ActorGroup, CriticGroup, fraction
from temper.cluster.weight_sync import plan_sync

logger = logging.getLogger(__name__)


class Cluster:
    """The running parts of one run (see the module docstring). `actor` is None with
    --debug-rollout-only, `critic` unless PPO; `engines` is empty with --debug-train-only."""

    def __init__(self, cfg, plan: ResourcePlan, data_source):
        self.cfg, self.plan, self.data_source = cfg, plan, data_source
        self.placement: Placement | None = None
        self.actor: ActorGroup | None = None
        self.critic: CriticGroup | None = None
        self.engines = EngineGroup([], timeout_s=cfg.engine_call_timeout)
        self.memory = MemoryPlan(offload_train=False, release=(), outcome="flags", why="not started")
        self.preflight = Preflight.of(cfg, fp32=False)  # the step-0 checks; fp32 known once the engines started
        self.started_lines: list[str] = []  # the memory plan and each engine, once started (the driver prints them)
        self.rollout: Any = None
        self.doctor: EngineDoctor | None = None  # --use-fault-tolerance
        self.sync_lock = threading.RLock()  # training, weight syncs and engine restarts take turns
        self.engine_version: int | None = None  # the weight version every engine serves (after the first sync)
        self._trained_since_sync = False
        self._synced_urls: list[str] = []  # the engines the weight sync was formed over
        self._owns_ray = False

    # ---- start and stop ------------------------------------------------------------------------------

    @classmethod
    def start(cls, cfg, data_source) -> Cluster:
        """Plan, start Ray, place and start every part; ConfigError (one line) if the plan cannot fit.

        A local run is planned before Ray starts (a bad GPU count costs nothing); a run that joins a
        Ray cluster (RAY_ADDRESS, or Ray already initialized) is planned against the cluster's GPUs."""
        import ray

        cuda, cores = local_resources()
        joining = ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))
        owns_ray = False
        try:
            if joining:
                owns_ray = start_ray(cores * CPU_OVERSUBSCRIPTION)
            plan = plan_resources(
                cfg, cuda_available=cuda, cluster_gpus=ray_cluster_gpus() if joining else None, cores=cores
            )
            if not joining:
                owns_ray = start_ray(cores * CPU_OVERSUBSCRIPTION)
        except BaseException:
            if owns_ray:
                ray.shutdown()
            raise
        cluster = cls(cfg, plan, data_source)
        cluster._owns_ray = owns_ray
        logger.info("placement: %s", plan.describe())
        try:
            cluster._launch()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _launch(self) -> None:
        """Start every part. Afterwards the trainer is on its devices and the engines have released the
        memory plan's tags: the state the drivers' weight sync starts from."""
        from temper.rollout import RolloutManager

        cfg, plan = self.cfg, self.plan
        _warn_ignored_engine_flags(cfg)
        self.placement = create_placement(plan)
        self.engines.use_api_key(give_engines_a_key(cfg, self.placement.single_node))  # before any worker starts
        if plan.colocate and plan.device == "cuda":  # the trainer loads while the engines hold no memory
            self._wait(self._create_engines())
            self._plan_memory(self.engines.device_memory())
            self.engines.release_memory()
            self._wait(self._create_trainers())
            kept = [tag for tag in ALL_TAGS if tag not in self.memory.release]
            if kept:
                self.engines.resume_memory(kept)
        else:
            self._plan_memory(None)
            self._wait(self._create_engines() + self._create_trainers())
            if self.memory.release:
                self.engines.release_memory(self.memory.release)
        self.engines.identify(cfg.ray_call_timeout)
        self.engines.urls += external_engine_urls(cfg.rollout_external_engine_addrs or [])
        urls = self.engines.urls
        fp32 = plan.device == "cpu" and not cfg.bf16 and self.engines.dtype == "float32"
        self.preflight = Preflight.of(cfg, fp32=fp32 and not cfg.rollout_external_engine_addrs)
        self.started_lines = [self.memory.describe(), *self.engines.describe()]  # the driver prints them
        self.rollout = RolloutManager(cfg, self._router(urls), data_source=self.data_source)
        if (thread := self.rollout.router) is not None:  # temper's router: errors naming an engine show its log
            thread.router.describe_worker = self.engines.describe_failure
            if cfg.use_fault_tolerance:
                self.doctor = EngineDoctor(self)
                thread.router.on_worker_failed = self.doctor.report
        self._connect_sync()

    def _connect_sync(self) -> None:
        """Form the weight sync over the engines there are now (again after an engine restarted)."""
        plan, urls = self.plan, list(self.engines.urls)
        if self.actor is None or not urls or urls == self._synced_urls:
            return
        self.actor.connect(
            plan_sync(
                self.cfg, engine_urls=urls, train_ranks=plan.train_ranks, engine_bundles=plan.engine_bundles,
                device=plan.device, master_address=self.placement.address(0),
                single_node=self.placement.single_node, engine_dtype=self.engines.dtype,
                ipc_buffer_bytes=self.memory.ipc_buffer_bytes,
            )
        )  # fmt: skip
        self._synced_urls = urls

    def _plan_memory(self, total: int | None) -> None:
        """Decide the memory plan (GPU memory `total` per GPU, None: unknown), log it, and write its
        choice into the config before the train ranks get it (the reference model reads it)."""
        self.memory = plan_memory(self.cfg, self.plan, total)
        logger.log(logging.INFO if self.memory.fits else logging.WARNING, "%s", self.memory.describe())
        self.cfg.offload_train, self.cfg.offload_rollout = self.memory.offload_train, bool(self.memory.release)

    def _wait(self, refs: list) -> None:
        """Wait for the starts in `refs`; engines' starts return their URLs, which go into `engines`."""
        started = wait_for(refs, [], "starting the train ranks and engines", self.cfg.ray_call_timeout)
        for result in started:
            if isinstance(result, str):
                self.engines.urls.append(result)

    def _create_trainers(self) -> list:
        """The actor group (and the critic's, PPO): their start refs (join the process group, build)."""
        if not self.plan.train_ranks:
            return []
        self.actor = ActorGroup(self.cfg, self.plan, self.placement)
        refs = self.actor.start()
        if self.plan.critic:
            self.critic = CriticGroup(self.cfg, self.plan, self.placement)
            refs += self.critic.start()
        return refs

    def _create_engines(self) -> list:
        plan, placement = self.plan, self.placement
        self.engines.dtype = engine_dtype(self.cfg, plan.device) if plan.num_engines else None
        refs = []
        for index, bundles in enumerate(plan.engine_bundles):
            share = plan.workers_in_bundle(bundles[0])
            options: dict[str, Any] = {
                "num_cpus": fraction(share),
                "scheduling_strategy": placement.strategy(bundles[0]),
                "runtime_env": {"env_vars": WORKER_ENV},
            }
            if plan.device == "cuda":
                options["num_gpus"] = fraction(share)
            host = placement.address(bundles[0])
            gpu_ids = [placement.gpu_ids[b] for b in bundles] if plan.device == "cuda" else None
            name = f"engine-{index}"
            args = (self.cfg, host, plan.device, plan.threads, gpu_ids, name)
            refs.append(self.engines.launch(EngineSlot(name, options, args, engine_log_file(self.cfg, name))))
        return refs

    def _router(self, urls: list[str]) -> str | list[str]:
        """An existing router named by --sglang-router-ip/--sglang-router-port (engines added to it), or
        the engine URLs (the rollout manager starts temper's router in front of them)."""
        ip, port = self.cfg.engine.sglang.get("router_ip"), self.cfg.engine.sglang.get("router_port")
        if ip is None or port is None:
            return urls
        router = f"http://{ip}:{port}"
        for url in urls:
            httpx.post(f"{router}/add_worker", params={"url": url}, timeout=300, trust_env=False).raise_for_status()
        return router

    def close(self) -> None:
        """Stop every part (rollout manager, train ranks, engines), free the placement group, leave Ray."""
        if self.doctor is not None:
            self.doctor.close()
        if self.rollout is not None:
            self.rollout.close()
        for group in (self.actor, self.critic):
            if group is not None:
                group.stop()
        self.engines.stop()
        remove_empty_stack_files(self.cfg)
        if self.placement is not None:
            self.placement.remove()
            self.placement = None
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- what the loop calls ---------------------------------------------------------------------

    def resume(self) -> int:
        """Restore from --load: the actor (and critic) with their optimizer, LR and RNG state, the data
        source with its buffer. Returns the first rollout id: --start-rollout-id, else the one after
        the checkpoint's, else 0."""
        cfg = self.cfg
        resumed = self.actor.load() if self.actor is not None and cfg.load else None
        if self.critic is not None and cfg.load:
            self.critic.load()
        if resumed is not None:
            root = Path(resumed.path).parent.parent  # <root>/iter_<id>/actor
            self.rollout.data_source.load(resumed.rollout_id, directory=str(root))
            logger.info("resumed from %s: rollout %d done", resumed.path, resumed.rollout_id)
        elif cfg.load and self.actor is None:
            self.rollout.load()
        if cfg.start_rollout_id is not None:
            return cfg.start_rollout_id
        return resumed.rollout_id + 1 if resumed is not None else 0

    def train(self, rollout_id: int, batch) -> dict[str, float]:
        """One rollout's optimizer steps. GRPO-like estimators: the actor alone. PPO: critic values,
        then the actor's advantages and returns, then the critic's update, then the actor's (after
        --num-critic-only-steps). The actor's first optimizer step of the run passes the preflight or
        stops the run (PreflightError)."""
        with self.sync_lock:  # from here the trainer's weights are ahead of the engines' version
            self._trained_since_sync = True
        metrics = _staleness(rollout_id, batch)
        if self.critic is None:
            return self._preflight(metrics | _prefixed("train/", self.actor.train(rollout_id, batch)))
        data = self.actor.prepare(rollout_id, batch, self.critic.compute_values(batch))
        metrics |= _prefixed("critic/", self.critic.update(data))
        if rollout_id >= self.cfg.num_critic_only_steps:
            metrics |= _prefixed("train/", self.actor.update())
        return self._preflight(metrics)

    def _preflight(self, metrics: dict[str, float]) -> dict[str, float]:
        """The preflight's checks of the actor's first optimizer step, once it has trained."""
        if self.preflight.wants_first_step and "train/loss" in metrics:
            self.preflight.first_step(self.actor.first_step_metrics())
        return metrics

    def save(self, rollout_id: int, data_state: dict | None = None) -> None:
        """Checkpoint rollout `rollout_id` under --save: the data source first (with `data_state`,
        when the driver generated ahead), the critic, then the actor, whose tracker file marks the
        checkpoint complete."""
        source = self.rollout.data_source
        if data_state is not None:
            current = source.state_dict()
            source.load_state_dict(data_state)
            try:
                source.save(rollout_id)
            finally:
                source.load_state_dict(current)
        else:
            self.rollout.save(rollout_id)
        if self.critic is not None:
            self.critic.save(rollout_id)
        if self.actor is not None:
            self.actor.save(rollout_id, {"weight_version": rollout_id + 1})

    def update_weights(self, version: int) -> dict[str, float]:
        """The actor's weights into every engine as `version`: engines paused in place meanwhile, then
        checked to serve `version` (and, with --check-weight-update-equal or on the preflight's first sync,
        to hold the same tensors: PreflightError for the preflight's)."""
        if self.actor is None or not len(self.engines):
            return {}
        with self.sync_lock:
            metrics = self._sync_engines(version)
            self.engine_version, self._trained_since_sync = version, False
            if self.doctor is not None:
                self.doctor.admit()
        metrics["sync/weight_version"] = float(version)
        if self.cfg.check_weight_update_equal or self.preflight.wants_weights:  # the preflight's: the first sync
            started = time.monotonic()
            metrics["sync/checked_tensors"] = float(self.preflight.weights(self.actor.check_weights, version))
            metrics["sync/check_s"] = time.monotonic() - started
        return metrics

    def _sync_engines(self, version: int) -> dict[str, float]:
        """Pause, send, continue, check the version. An engine that is dead or stuck stops the run naming
        it, or with --use-fault-tolerance is restarted (before the sync, or when it fails in the middle:
        then the sync is sent again, at most `SYNC_ATTEMPTS` times)."""
        for attempt in range(1, SYNC_ATTEMPTS + 1):
            if self.doctor is not None:
                self.doctor.heal()
            self._connect_sync()  # formed again when an engine was restarted
            try:
                self.engines.pause()
                try:
                    metrics = self.actor.update_weights(version)
                finally:
                    self.engines.continue_generation()
                self.engines.expect_version(str(version))
                return metrics
            except Exception as e:
                failed = self.engines.unresponsive(self.cfg.rollout_health_check_timeout)
                if not failed:
                    raise
                if self.doctor is None:
                    raise EngineFailure(_failure_message(self.engines, failed, f"the weight sync to version {version}"))
                if attempt == SYNC_ATTEMPTS:
                    raise
                logger.warning("the weight sync to version %s failed (%s): engines %s are down; restarting them and "
                               "sending it again", version, e, ", ".join(failed))
        raise AssertionError("unreachable")

    def engines_current(self) -> bool:
        """Whether the trainer holds exactly the weights the engines serve (no training since the last sync)."""
        return self.engine_version is not None and not self._trained_since_sync

    def offload_train(self) -> None:
        """Every train rank's state to CPU (pinned buffers; see `TrainableModel.offload`)."""
        for group in (self.actor, self.critic):
            if group is not None:
                group.offload()

    def onload_train(self) -> None:
        for group in (self.actor, self.critic):
            if group is not None:
                group.onload()

    def trim_train(self) -> None:
        """Every train rank returns the GPU memory its allocator caches but no tensor uses (the last
        step's activations and gradients), so that a resuming engine can take it."""
        for group in (self.actor, self.critic):
            if group is not None:
                group.trim()


SYNC_ATTEMPTS = 3


class EngineFailure(RuntimeError):
    """An engine died or stopped answering and --use-fault-tolerance is off."""


def _failure_message(engines: EngineGroup, failed: list[str], during: str) -> str:
    named = "; ".join(f"engine {url} does not answer{engines.describe_failure(url)}" for url in failed)
    return (f"{during} failed: {named}. With --use-fault-tolerance temper takes a failed engine out of the router, "
            "sends its requests to the others and restarts it")


def _warn_ignored_engine_flags(cfg) -> None:
    if cfg.rollout_backend != "builtin":
        return
    _, ignored = builtin_server_settings(cfg)
    if ignored:
        logger.warning("the built-in engine ignores %s", ", ".join(ignored))


def _staleness(rollout_id: int, batch) -> dict[str, float]:
    """How many weight updates behind the trained policy the oldest token of the batch was generated
    (0 in the synchronous loop; up to --async-buffer-size in train_async). Versions are rollout counts."""
    versions = [v for vs in batch.weight_versions for v in vs]
    if not versions or not all(v.isdigit() for v in versions):
        return {}
    return {"rollout/staleness_max": float(rollout_id - min(int(v) for v in versions))}


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {prefix + name: value for name, value in metrics.items()}


def due(rollout_id: int, interval: int | None, num_rollout: int | None = None) -> bool:
    """slime's periodic-action rule: every `interval` rollouts, and at the last one when `num_rollout`
    is given (so the final state is always saved)."""
    if interval is None:
        return False
    return (rollout_id + 1) % interval == 0 or (num_rollout is not None and rollout_id + 1 == num_rollout)
