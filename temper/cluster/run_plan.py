"""What a command line will do, in words, before anything starts: `temper plan` and a run's first lines.

Five parts, a line or two each, from the validated config and the machine it is planned for:

- batch: prompts x samples per prompt = samples per rollout, the global batch and the optimizer steps
  per rollout, how each step is spread over the train ranks and cut into micro-batches.
- placement: colocated or disaggregated, which GPUs (CPU slots without CUDA) hold the train ranks
  (and PPO's critic) and which the engines, and how weights reach the engines (placement.py's plan).
- memory: per GPU, the trainer's and the engine's share (memory_plan.py's estimate; on colocated GPUs
  the memory plan a run would decide); on CPU, host memory.
- staleness: which weight version generates each rollout (train.py: the current one; train_async.py:
  up to --async-buffer-size + --update-weights-interval - 1 versions behind).
- warnings: settings that will cost memory, time or learning (one line each), and a --load that holds
  no checkpoint.

The estimate needs the checkpoint's config.json and *.safetensors headers (no weights are read) and the
GPU's memory: this machine's (nvidia-smi; no CUDA context is created) or the one `temper plan
--gpu-memory-gib` names.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from temper import machine
from temper.cluster.memory_plan import GiB, ModelSize, checkpoint_params, estimate, with_ipc_buffer
from temper.cluster.placement import ResourcePlan, local_resources, plan_resources
from temper.config import ConfigError
from temper.config_rules import GROUP_NORMALIZED

IPC_WHOLE = ", handed over in one buffer of the whole model when the memory plan has room for it"
TRANSPORTS = {
    "broadcast": "one broadcast group of train rank 0 and every engine ({backend})",
    "ipc": "CUDA IPC handles of one buffer on each shared GPU, no copy through host memory",
    "tensor": "safetensors buckets in shared memory (/dev/shm) on each host",
    "disk": "safetensors shards in a folder every engine reads",
}
"""What each --update-weight-transport does, in a few words (weight_sync.py has the whole story)."""


@dataclass(frozen=True)
class Target:
    """The machine a plan is made for.

    device: "cuda" or "cpu" (without CUDA every GPU asked for is a CPU worker). gpu_bytes: memory of
    each GPU (None: unknown, so no GPU estimate). cores: CPU cores (the CPU worker limit). local: the
    plan checks GPU counts against this machine; otherwise it assumes a cluster with every GPU the run
    asks for (planning on a login node for a GPU cluster).
    """

    device: str
    gpu_bytes: int | None = None
    cores: int = 1
    local: bool = True

    @classmethod
    def here(cls, device: str | None = None, gpu_bytes: int | None = None) -> Target:
        """This machine, or `device` / `gpu_bytes` in its place (GPU memory: the smallest visible GPU;
        `gpu_bytes` alone means GPUs of that size)."""
        cuda, cores = local_resources()
        local_device = "cuda" if cuda else "cpu"
        device = device or ("cuda" if gpu_bytes else local_device)
        if gpu_bytes is None and device == "cuda" and cuda:
            visible = machine.visible_gpus(machine.gpus())
            gpu_bytes = min((g.total for g in visible), default=None) if visible else None
        return cls(device, gpu_bytes, cores, local=device == local_device)


def describe_run(cfg, driver: str, target: Target | None) -> list[str]:
    """The plan of validated `cfg` under `driver` ("train.py" or "train_async.py") on `target`, as lines
    ("batch: ...", "placement: ...", ..., "warning: ..."). `target` None: the run joins a Ray cluster,
    whose GPUs are counted only when it starts (no placement or memory lines). ConfigError when the
    placement cannot fit."""
    plan = RunPlan(cfg, driver, target)
    return plan.lines + [f"warning: {w}" for w in plan.warnings]


def announce(cfg, driver: str) -> None:
    """Print a run's plan as its first lines (the driver calls it before the cluster starts). It never
    stops the run: a placement that cannot fit prints nothing (the cluster's start says why, from what it
    finds), any other failure to describe the run is one line."""
    try:
        lines = describe_run(cfg, driver, None if _joins_ray() else Target.here())
    except ConfigError:
        return
    except Exception as e:  # noqa: BLE001 -- the plan is a courtesy; the run goes on without it
        print(f"{driver}: the run's plan could not be described ({type(e).__name__}: {e})", flush=True)
        return
    header = f"{driver} plan (temper plan prints it without running):"
    print("\n".join([header, *(f"  {x}" for x in lines)]), flush=True)


def _joins_ray() -> bool:
    """Whether the run will join a Ray cluster (RAY_ADDRESS, or Ray already up in this process)."""
    ray = sys.modules.get("ray")
    return bool(os.environ.get("RAY_ADDRESS")) or (ray is not None and ray.is_initialized())


class RunPlan:
    """The parts of the module docstring, built at construction: `lines` and `warnings`."""

    def __init__(self, cfg, driver: str, target: Target | None):
        self.cfg, self.driver, self.target = cfg, driver, target
        self.asynchronous = Path(driver).name == "train_async.py"
        self.resources = _resources(cfg, target) if target is not None else None
        self.lines: list[str] = []
        self.warnings: list[str] = []
        self._batch()
        self._placement()
        self._memory()
        self._staleness()
        self._algorithm()
        self._resume()

    @property
    def train_ranks(self) -> int:
        if self.resources is not None:
            return self.resources.train_ranks
        return 0 if self.cfg.debug_rollout_only else max(self.cfg.actor_num_gpus, 1)

    # ---- batch ----------------------------------------------------------------------------------

    def _batch(self) -> None:
        cfg = self.cfg
        rbs, n = cfg.rollout_batch_size, cfg.n_samples_per_prompt
        gbs, steps = cfg.global_batch_size, cfg.num_steps_per_rollout
        if cfg.num_rollout is not None:
            total = f"; {cfg.num_rollout} rollouts = {cfg.num_rollout * steps} optimizer steps in all"
        else:
            total = f"; --num-epoch {cfg.num_epoch}: the rollouts are counted from the prompt data at start"
        if cfg.debug_rollout_only:
            total = "; no training (--debug-rollout-only)"
        self.lines.append(
            f"batch: {rbs} prompts x {n} samples per prompt = {rbs * n} samples per rollout; global batch {gbs} "
            f"samples, so {steps} optimizer step{_s(steps)} per rollout{total}"
        )
        if cfg.dynamic_sampling_filter_path:
            self.lines.append(
                f"filtering: prompts are drawn {cfg.over_sampling_batch_size} at a time (--over-sampling-batch-size) "
                f"until {rbs} groups pass --dynamic-sampling-filter-path"
            )
        if self.train_ranks:
            self.lines.append(self._micro_batches(gbs, self.train_ranks))

    def _micro_batches(self, gbs: int, ranks: int) -> str:
        cfg = self.cfg
        share = f"{gbs // ranks}" if gbs % ranks == 0 else f"about {gbs / ranks:.1f}"
        spread = f"each optimizer step's {gbs} samples go to {ranks} train ranks by token count ({share} each)"
        if ranks == 1:
            spread = f"each optimizer step's {gbs} samples go to the one train rank"
        if gbs < ranks:
            self.warnings.append(
                f"global batch {gbs} < {ranks} train ranks: some ranks train on empty (padding) micro-batches in "
                f"every step"
            )
        if not cfg.use_dynamic_batch_size:
            passes = math.ceil(gbs / ranks / cfg.micro_batch_size)
            return (
                f"micro-batches: {spread}, cut into micro-batches of {cfg.micro_batch_size} sample"
                f"{_s(cfg.micro_batch_size)} (--micro-batch-size): about {passes} forward/backward "
                f"pass{_s(passes, 'es')} per rank per step"
            )
        budget, longest = cfg.max_tokens_per_gpu, _longest_sample(cfg)
        room = ""
        if longest:
            room = (
                f"; the longest possible sample ({longest:,} tokens) leaves room for {budget // longest} per "
                f"micro-batch"
            )
            if longest > budget:
                self.warnings.append(
                    f"a sample can reach {longest:,} tokens, more than --max-tokens-per-gpu {budget:,}: such a sample "
                    f"trains alone in a micro-batch, above the budget the memory estimate assumes"
                )
        return (
            f"micro-batches: {spread}, packed into micro-batches of at most {budget:,} tokens (--max-tokens-per-gpu; "
            f"a longer sample gets one of its own){room}"
        )

    # ---- placement ------------------------------------------------------------------------------

    def _placement(self) -> None:
        cfg, r = self.cfg, self.resources
        if r is None:
            self.lines.append("placement: decided against the Ray cluster the run joins, once it has started")
            return
        unit = "GPU" if r.device == "cuda" else "CPU slot"
        parts = []
        if r.train_ranks:
            critic = ", each with a PPO critic rank" if r.critic else ""
            parts.append(f"train rank{_s(r.train_ranks)} {_span(range(r.train_ranks))} on {unit}{_s(r.train_ranks)} "
                         f"{_span(r.train_bundles)} (FSDP2 over {r.train_ranks}{critic})")  # fmt: skip
        parts.append(self._engines(r, unit))
        mode = f"colocated (engines share the train {unit}s)" if r.colocate else "disaggregated"
        line = f"placement: {mode} on {r.num_bundles} {unit}{_s(r.num_bundles)}: {'; '.join(parts)}"
        if r.device == "cuda" and r.num_bundles > cfg.num_gpus_per_node:
            nodes = math.ceil(r.num_bundles / cfg.num_gpus_per_node)
            per_node = cfg.num_gpus_per_node
            line += f"; {nodes} nodes of {per_node} GPUs (--num-gpus-per-node): GPU g on node g // {per_node}"
        if r.device != "cuda":
            line += (
                f"; no CUDA, so each GPU asked for is a CPU worker: {r.num_processes} worker process"
                f"{_s(r.num_processes, 'es')}, {r.threads} torch thread{_s(r.threads)} each on {self.target.cores} "
                f"core{_s(self.target.cores)}"
            )
        self.lines.append(line)
        if r.train_ranks and (r.num_engines or cfg.rollout_external_engine_addrs):
            self.lines.append(self._weight_sync(r))

    def _engines(self, r: ResourcePlan, unit: str) -> str:
        cfg = self.cfg
        if cfg.rollout_external_engine_addrs:
            addrs = cfg.rollout_external_engine_addrs
            return f"{len(addrs)} external engine{_s(len(addrs))} ({', '.join(addrs)}), not started by temper"
        if not r.num_engines:
            if cfg.load_debug_rollout_data:
                return "no engines: rollouts replayed from --load-debug-rollout-data"
            return f"no engines: rollouts made by {cfg.rollout_function_path} without generating"
        bundles = [b for group in r.engine_bundles for b in group]
        per = r.gpus_per_engine
        tp = f", tensor parallel over {per}" if per > 1 else ""
        return (
            f"engine{_s(r.num_engines)} {_span(range(r.num_engines))} on {unit}{_s(len(bundles))} {_span(bundles)} "
            f"({per} {unit}{_s(per)} each{tp}; {cfg.rollout_backend} engine)"
        )

    def _weight_sync(self, r: ResourcePlan) -> str:
        from temper.cluster.weight_sync import default_transport

        cfg = self.cfg
        transport = _transport(cfg, r.device)
        words = TRANSPORTS[transport].format(backend="NCCL" if r.device == "cuda" else "gloo")
        if transport == "disk":
            words += f" ({cfg.update_weight_disk_dir or 'a temporary folder'})"
        default = " (the default here)" if transport == default_transport(cfg.colocate, r.device) else ""
        every = cfg.update_weights_interval if self.asynchronous else 1
        return (
            f"weight sync: {transport}{default}: {words}; buckets of {cfg.update_weight_buffer_size / 2**20:.0f} MiB "
            f"(--update-weight-buffer-size){IPC_WHOLE if transport == 'ipc' else ''}, after every {_nth(every)}rollout"
        )

    # ---- memory ---------------------------------------------------------------------------------

    def _memory(self) -> None:
        cfg, r = self.cfg, self.resources
        if r is None or not (r.train_ranks or r.num_engines):
            return
        model = _model_size(cfg.hf_checkpoint)
        if model is None:
            self.lines.append("memory: not estimated (no --hf-checkpoint folder with config.json and *.safetensors)")
            return
        if r.device != "cuda":
            self._host_memory(model, r)
        elif self.target.gpu_bytes is None:
            self.lines.append("memory: not estimated: GPU memory unknown here (temper plan --gpu-memory-gib N)")
        elif r.colocate and r.train_ranks and r.num_engines:
            self._colocated_memory(model, r)
        else:
            self._separate_memory(model, r)

    def _sizes(self, model: ModelSize, r: ResourcePlan, total: int):
        """memory_plan.estimate, with the weight-sync transport the run will use (the ipc buffer counts
        only for ipc) and at least one train rank (engine-only runs)."""
        return estimate(self._run_cfg(r), self._at_least_one_rank(r), total, model.params)

    def _run_cfg(self, r: ResourcePlan):
        cfg = copy.deepcopy(self.cfg)
        cfg.update_weight_transport = _transport(cfg, r.device)
        return cfg

    @staticmethod
    def _at_least_one_rank(r: ResourcePlan) -> ResourcePlan:
        return ResourcePlan(**{**r.__dict__, "train_ranks": max(r.train_ranks, 1)})

    def _colocated_memory(self, model: ModelSize, r: ResourcePlan) -> None:
        total = self.target.gpu_bytes
        plan = with_ipc_buffer(self._run_cfg(r), self._at_least_one_rank(r), total, model.params)
        self.lines.append(plan.describe())
        where = f"{_billions(model)} on {r.num_bundles} GPU{_s(r.num_bundles)} of {total / GiB:.0f} GiB"
        if not plan.fits:
            both = " (train_async.py keeps both sides resident)" if self.asynchronous else ""
            self.warnings.append(f"colocated {where} does not fit{both}: expect out-of-memory; {self._remedies()}")
        elif plan.outcome == "offload":
            self.warnings.append(
                f"colocated {where} needs offload: the trainer's state goes to CPU outside training and the engine "
                f"releases its weights and KV cache while the trainer trains (each step pays both moves); "
                f"{self._remedies()} may avoid it"
            )

    def _remedies(self) -> str:
        """What lowers the trainer's or the engine's share, given the flags."""
        cfg = self.cfg
        ways = ["more GPUs (FSDP shards the trainer's state)"]
        if not cfg.recompute_activations:
            ways.append("--recompute-activations")
        ways.append("fewer tokens per micro-batch")
        if self.resources.colocate:
            ways.append("a lower --sglang-mem-fraction-static")
        return ", ".join(ways[:-1]) + " or " + ways[-1]

    def _separate_memory(self, model: ModelSize, r: ResourcePlan) -> None:
        total = self.target.gpu_bytes
        sizes = self._sizes(model, r, total)
        of = f"of {total / GiB:.1f} GiB"
        if r.train_ranks:
            need = sizes.trainer_peak + sizes.reserve
            self.lines.append(
                f"memory per train GPU: {sizes.trainer_resident / GiB:.1f} GiB outside training, "
                f"{sizes.trainer_peak / GiB:.1f} while training (+{sizes.reserve / GiB:.0f} reserve) {of}: "
                f"{'fits' if need <= total else 'does NOT fit'}"
            )
            if need > total:
                self.warnings.append(
                    f"training {_billions(model)} on {r.train_ranks} GPU{_s(r.train_ranks)} needs about "
                    f"{need / GiB:.0f} GiB per GPU {of}: {self._remedies()}"
                )
        if r.num_engines:
            kv = sizes.engine_whole - sizes.engine_weights
            self.lines.append(
                f"memory per engine GPU: {sizes.engine_whole / GiB:.1f} GiB {of} (--sglang-mem-fraction-static): "
                f"weights {sizes.engine_weights / GiB:.1f}, KV cache and activations {kv / GiB:.1f}"
            )
            if kv <= 0:
                self.warnings.append(
                    "the engine's weights fill its share of the GPU: raise --sglang-mem-fraction-static"
                )

    def _host_memory(self, model: ModelSize, r: ResourcePlan) -> None:
        import torch

        from temper.cluster.engine_group import engine_dtype

        sizes = self._sizes(model, r, total=0)
        dtype = engine_dtype(self.cfg, "cpu")
        weights = model.params * getattr(torch, dtype).itemsize // r.gpus_per_engine
        parts = []
        if r.train_ranks:
            parts.append(f"each train rank about {_size(sizes.trainer_resident)} outside training and "
                         f"{_size(sizes.trainer_peak)} while training")  # fmt: skip
        if r.num_engines:
            parts.append(f"each engine {_size(weights)} of {dtype} weights plus its KV cache")
        memory = machine.host_memory() if self.target.local else None
        here = f"; {memory[1] / GiB:.1f} of {memory[0] / GiB:.1f} GiB available here" if memory else ""
        self.lines.append(f"memory (host, CPU run): {', '.join(parts)}{here}")
        need = r.train_ranks * sizes.trainer_peak + r.num_engines * r.gpus_per_engine * weights
        if memory and need > memory[1]:
            self.warnings.append(f"the workers need about {need / GiB:.1f} GiB of host memory, more than is available")

    # ---- staleness and algorithm ----------------------------------------------------------------

    def _staleness(self) -> None:
        cfg = self.cfg
        d, u = cfg.async_buffer_size, cfg.update_weights_interval
        if not self.asynchronous:
            self.lines.append(
                "staleness: none (train.py): rollout k is generated by weight version k, the weights after k trained "
                "rollouts, and the engines get version k+1 once rollout k has trained"
            )
            if d != 1 or u != 1:
                self.warnings.append(
                    "--async-buffer-size and --update-weights-interval are train_async.py's; train.py syncs the "
                    "weights after every rollout"
                )
            return
        version = f"k - {d}" if u == 1 else f"{u} x floor((k - {d}) / {u})"
        partial = ""
        if cfg.partial_rollout:
            partial = (
                "; with --partial-rollout an unfinished group goes back to the buffer and ends in a later rollout, so "
                "its first tokens can be older than that (a sample lists every version that generated it)"
            )
        self.lines.append(
            f"staleness (train_async.py): generation runs up to {d} rollout{_s(d)} ahead of training "
            f"(--async-buffer-size) and the engines get new weights after every {_nth(u)}rollout "
            f"(--update-weights-interval), never in the middle of one: rollout k is generated by weight version "
            f"{version} or newer, at most {d + u - 1} version{_s(d + u - 1)} behind the policy that trains it (the "
            f"first {'rollout' if d == 1 else f'{d} rollouts'} by the starting weights); each sample records its "
            f"version (metric rollout/staleness_max){partial}"
        )

    def _algorithm(self) -> None:
        cfg = self.cfg
        if (cfg.n_samples_per_prompt == 1 and cfg.advantage_estimator in GROUP_NORMALIZED and cfg.rewards_normalization
                and cfg.loss_type != "sft_loss"):  # SFT has no advantages
            self.warnings.append(
                f"--advantage-estimator {cfg.advantage_estimator} with --n-samples-per-prompt 1: each group has one "
                f"sample, its own mean, so every advantage is 0 and nothing is learned from the rewards; use several "
                f"samples per prompt (4-16)"
            )

    def _resume(self) -> None:
        """A --load without a checkpoint starts from --hf-checkpoint (a first run with --load = --save):
        said, so that a mistyped path does not start a fresh run without a word."""
        cfg = self.cfg
        if cfg.load and (missing := _no_checkpoint(Path(cfg.load))) is not None:
            self.warnings.append(
                f"--load {cfg.load} holds no checkpoint ({missing}): the run starts from --hf-checkpoint "
                f"{cfg.hf_checkpoint}, as a first run with --load = --save does; check the path if you meant to resume"
            )


def _no_checkpoint(path: Path) -> str | None:
    """Why `path` (--load) holds no checkpoint to resume from, or None when it holds one."""
    from temper.train.checkpoint import TRACKER_FILE  # imported here: torch.distributed

    if not path.exists():
        return "no such folder"
    held = (path / TRACKER_FILE, path / "model", path / "actor", path / "rollout")  # rollout: the data source's
    if any(p.exists() for p in held):
        return None
    if (path / "config.json").is_file():
        return "it is a Hugging Face model folder; pass that as --hf-checkpoint"
    return f"no {TRACKER_FILE} there"


def _resources(cfg, target: Target) -> ResourcePlan:
    """placement.plan_resources for `target`: against this machine's GPUs, or a cluster with all the
    GPUs the run asks for (the train GPUs plus --rollout-num-gpus bound every plan's bundles)."""
    cuda = target.device == "cuda"
    cluster_gpus = None
    if cuda and not target.local:
        cluster_gpus = float(cfg.actor_num_gpus + (cfg.rollout_num_gpus or 0))
    return plan_resources(cfg, cuda_available=cuda, cluster_gpus=cluster_gpus, cores=target.cores)


def _transport(cfg, device: str) -> str:
    from temper.cluster.weight_sync import default_transport

    transport = cfg.update_weight_transport or default_transport(cfg.colocate, device)
    return "broadcast" if transport == "nccl" else transport


def _model_size(folder: str | None) -> ModelSize | None:
    if not folder or not (Path(folder) / "config.json").is_file():
        return None
    params = checkpoint_params(folder)
    if params is None:
        return None
    return ModelSize.of(json.loads((Path(folder) / "config.json").read_text()), params)


def _longest_sample(cfg) -> int | None:
    """The most tokens a sample can have, when the flags bound it."""
    if cfg.rollout_max_prompt_len and cfg.rollout_max_response_len:
        return cfg.rollout_max_prompt_len + cfg.rollout_max_response_len
    return cfg.rollout_max_context_len


def _size(n: int) -> str:
    """Bytes in GiB, or MiB below one GiB."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.0f} MiB"


def _billions(model: ModelSize) -> str:
    return f"{model.params / 1e9:.1f}B model" if model.params >= 1e8 else f"{model.params / 1e6:.1f}M model"


def _span(items) -> str:
    """"0", "0-3" or "0, 2, 5": consecutive runs joined."""
    items = list(items)
    if not items:
        return "none"
    if items == list(range(items[0], items[-1] + 1)):
        return str(items[0]) if len(items) == 1 else f"{items[0]}-{items[-1]}"
    return ", ".join(map(str, items))


def _s(n: int, suffix: str = "s") -> str:
    return "" if n == 1 else suffix


def _nth(n: int) -> str:
    """"" for 1, else "2nd ", "3rd ", "4th ", ... (as in "every 2nd rollout")."""
    if n == 1:
        return ""
    ending = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{ending} "
