"""The rollout side: prompts -> engines -> samples -> rewards -> the trainer's batch.

- `RolloutManager` (manager.py): one rollout step end to end, reward normalization, metrics, eval;
- `generate_rollout` (rollout.py): slime's default rollout function (over-sampling, dynamic filter,
  abort, partial rollout); evaluation in evaluation.py;
- `generate.generate`: the default per-sample generate function over the engine HTTP API (not
  re-exported here, so that `temper.rollout.generate` stays the module);
- `rewards/`: built-in reward functions (`--rm-type`) and the custom-reward dispatch;
- `recording.py`: every rollout's samples on disk (replay: --load-debug-rollout-data);
- `filters.py`: dynamic-sampling filters; `dp_split.py`: balanced data-parallel split;
- `EngineClient` (engine_client.py) and the built-in router (router.py, routing_policy.py;
  ``python -m temper.rollout.router``).

Names are imported on first use, so that ``python -m temper.rollout.router`` and light importers do
not load every module.
"""

import importlib

_EXPORTS = {
    "RolloutFnEvalOutput": "base_types", "RolloutFnTrainOutput": "base_types",
    "balanced_partition": "dp_split", "split_for_dp": "dp_split",
    "EngineClient": "engine_client", "EngineError": "engine_client",
    "DynamicFilterOutput": "filters", "check_reward_nonzero_std": "filters",
    "check_reward_nonzero_std_with_fallback": "filters",
    "GenerateState": "generate", "get_state": "generate",
    "RolloutManager": "manager", "normalize_rewards": "manager", "post_process_rewards": "manager",
    "RM_TYPES": "rewards", "async_rm": "rewards", "batched_async_rm": "rewards",
    "generate_rollout": "rollout", "generate_rollout_async": "rollout",
    "Router": "router", "RouterThread": "router", "start_router": "router",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'temper.rollout' has no attribute {name!r}")
    return getattr(importlib.import_module(f"temper.rollout.{_EXPORTS[name]}"), name)
