"""Orchestration on Ray: placement, train groups, engines, weight sync — the only part that imports Ray.

- `Cluster` (cluster.py): starts every part of a run from its config and is what the drivers
  (`train.py`, `train_async.py`) talk to; `due` is slime's periodic-action rule; `run_driver`
  (driver.py) parses the flags and runs a driver loop with a `Cluster` and a `RunLog`.
- placement.py: the resource plan (GPU counts; CPU slots on machines without CUDA) and the one
  placement group; train_group.py: train ranks as Ray actors in one torch.distributed group;
  engine_group.py: engine servers as Ray actors; weight_sync.py: versioned, bucketed weight sync
  (broadcast, tensor handoff, disk); rollout_ahead.py: train_async's generation ahead of training;
  preflight.py: the step-0 checks of every run (first sync's weights, first step's ratio and log-prob gap).

Ray is imported when a run starts, not when this package is imported. The names below are imported
lazily too: a Ray worker process unpickles its class from train_group.py or engine_group.py, which
imports this package, and must not load the driver's modules (the rollout manager, the run log, the
data sources) with it.
"""

import importlib

_EXPORTS = {
    "CPU_OVERSUBSCRIPTION": "placement", "Cluster": "cluster", "ResourcePlan": "placement",
    "RolloutsAhead": "rollout_ahead", "SyncSpec": "weight_sync", "WeightSender": "weight_sync",
    "due": "cluster", "plan_resources": "placement", "run_driver": "driver",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'temper.cluster' has no attribute {name!r}")
    return getattr(importlib.import_module(f"temper.cluster.{_EXPORTS[name]}"), name)
