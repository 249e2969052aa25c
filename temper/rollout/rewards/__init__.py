"""Built-in reward functions (slime's `rm_hub`) and the dispatch that picks one per sample.

`--rm-type`: math, deepscaler, dapo, f1, gpqa, remote_rm, random (each also with a ``boxed_``
prefix); or `--custom-rm-path` for your own (see `hub`).
"""

from temper.rollout.rewards.hub import RM_TYPES, async_rm, batched_async_rm, builtin_rm, call_maybe_async

__all__ = ["RM_TYPES", "async_rm", "batched_async_rm", "builtin_rm", "call_maybe_async"]
