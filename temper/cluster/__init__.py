"""Orchestration on Ray: placement, train groups, engines, weight sync — the only part that imports Ray.

- `Cluster` (cluster.py): starts every part of a run from its config and is what the drivers
  (`train.py`, `train_async.py`) talk to; `due` is slime's periodic-action rule; `run_driver`
  (driver.py) parses the flags and runs a driver loop with a `Cluster` and a `RunLog`.
- placement.py: the resource plan (GPU counts; CPU slots on machines without CUDA) and the one
  placement group; train_group.py: train ranks as Ray actors in one torch.distributed group;
  engine_group.py: engine servers as Ray actors; weight_sync.py: versioned, bucketed weight sync
  (broadcast, tensor handoff, disk); rollout_ahead.py: train_async's generation ahead of training;
  preflight.py: the step-0 checks of every run (first sync's weights, first step's ratio and log-prob gap).

Ray is imported when a run starts, not when this package is imported.
"""

from temper.cluster.cluster import Cluster, due
from temper.cluster.driver import run_driver
from temper.cluster.placement import CPU_OVERSUBSCRIPTION, ResourcePlan, plan_resources
from temper.cluster.rollout_ahead import RolloutsAhead
from temper.cluster.weight_sync import SyncSpec, WeightSender

__all__ = [
    "CPU_OVERSUBSCRIPTION",
    "Cluster",
    "ResourcePlan",
    "RolloutsAhead",
    "SyncSpec",
    "WeightSender",
    "due",
    "plan_resources",
    "run_driver",
]
