"""`RolloutManager`: one rollout step end to end, from prompts to the trainer's `RolloutBatch`.

    manager = RolloutManager(args, ["http://127.0.0.1:30001", "http://127.0.0.1:30002"])
    batch = manager.generate(rollout_id)      # rollout function -> rewards post-processed -> RolloutBatch
    metrics = manager.last_metrics            # reward, lengths, truncation, cache hits, timings
    manager.eval(rollout_id); manager.save(rollout_id); manager.load()

Every rollout's samples are recorded (recording.py: <run dir>/rollouts/, compressed, written off the
rollout's path; --save-debug-rollout-data's template instead when given) and `--load-debug-rollout-data`
replays a recording instead of calling the rollout function.

With `--log-passrate` the metrics hold passrate/pass@k (k = 1, 2, 4, ... up to the group size) over the
prompt groups of the raw rewards (`pass_at_k`: a sample passes at reward 1).

Reward post-processing happens here and only here: `RolloutBatch.rewards` carries the rewards the
advantage estimator uses, `raw_rewards` the ones the reward functions gave. For grpo, gspo and cispo
rewards are normalized within each prompt group, (R − mean) / (std + 1e-6) (mean only with
`--disable-grpo-std-normalization`), for reinforce_plus_plus_baseline the group mean is subtracted;
nothing is done with `--disable-rewards-normalization`, or for ppo, reinforce_plus_plus and rloo (rloo
takes its leave-one-out baseline from raw rewards in the trainer). `--custom-reward-post-process-path`
replaces all of this: ``fn(args, samples) -> (raw_rewards, rewards)``; `--custom-convert-samples-to-train-data-path`
replaces it and the conversion too (`train_data_conversion`).

Departure from slime: groups are found by `Sample.group_index`, not by cutting the batch into rows
of n_samples_per_prompt, so fan-out, recycled or reordered samples are normalized within their own
group (slime falls back to one batch-wide group when the count does not match).

ABORTED, FAILED (and PENDING: never generated) samples never reach the trainer; they are counted in
the metrics and logged.
Samples with `remove_sample` stay in the batch (they count in normalization) with a zero loss mask.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import torch

from temper.algo import group_normalize_rewards
from temper.data import build_data_source
from temper.rollout.async_loop import run
from temper.rollout.base_types import flatten_samples, wrap_rollout_output
from temper.rollout.engine_client import EngineClient
from temper.rollout.evaluation import eval_metrics
from temper.rollout.generate_and_rm import generate_function, is_list_style
from temper.rollout.pass_at_k import pass_at_k_metrics
from temper.rollout.plugins import load_plugin
from temper.rollout.recording import RolloutRecorder, load_recording, recording_template
from temper.rollout.router import RouterThread, start_router
from temper.rollout.router_flags import ROUTER_ARG_OF, router_settings
from temper.rollout.train_data_conversion import batch_from_train_data, load_converter
from temper.types import RolloutBatch, Sample

logger = logging.getLogger(__name__)

STD_NORMALIZED = ("grpo", "gspo", "cispo")
MEAN_NORMALIZED = ("reinforce_plus_plus_baseline",)
EXCLUDED = (Sample.Status.ABORTED, Sample.Status.FAILED, Sample.Status.PENDING)


class RolloutManager:
    """Rollouts against engines behind one router.

    `engines` is a router URL (``http://host:port``, temper's or sglang-router), or a list of engine
    URLs, for which a temper router is started in this process (stopped by `close`). The router's
    address is written to ``args.sglang_router_ip`` / ``args.sglang_router_port``, where slime-style
    generate functions look for it. `data_source` defaults to `--data-source-path`'s.
    """

    def __init__(self, args: Any, engines: str | Sequence[str], data_source: Any = None) -> None:
        self.args = args
        if path := getattr(args, "custom_generate_function_path", None):  # a wrong signature stops the start
            is_list_style(generate_function(args), path)
        self._router: RouterThread | None = None
        if isinstance(engines, str):
            self.router_url = engines.rstrip("/")
        else:
            settings, ignored = router_settings(args)
            if ignored:
                logger.warning("temper's router does not use %s (it takes --router-%s)", ", ".join(ignored),
                               ", --router-".join(name.replace("_", "-") for name in ROUTER_ARG_OF))
            self._router = start_router(list(engines), **settings)
            self.router_url = self._router.url
        address = urlparse(self.router_url)
        args.sglang_router_ip, args.sglang_router_port = address.hostname, address.port
        self.data_source = data_source if data_source is not None else build_data_source(args)
        self.rollout_fn = load_plugin(args.rollout_function_path, flag="--rollout-function-path")
        eval_path = getattr(args, "eval_function_path", None)
        self.eval_fn = load_plugin(eval_path, flag="--eval-function-path") if eval_path else self.rollout_fn
        self.convert_fn = load_converter(args)
        self.last_metrics: dict[str, float] = {}
        self.last_samples: list[Sample] = []  # the last rollout's trained samples (the run report shows a few)
        self.last_eval_data: dict[str, dict[str, list]] = {}
        template = recording_template(args)
        self.recorder = RolloutRecorder(template, rollout_seed=getattr(args, "rollout_seed", 0)) if template else None

    @property
    def router(self) -> RouterThread | None:
        """The in-process router this manager started (None when given a router URL)."""
        return self._router

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
        if self._router is not None:
            self._router.stop()
            self._router = None

    def __enter__(self) -> RolloutManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- rollout ---------------------------------------------------------------------------------

    def generate(self, rollout_id: int) -> RolloutBatch:
        """One rollout step: samples from the rollout function (or replayed from a recording with
        `--load-debug-rollout-data`), recorded (recording.py), rewards post-processed, as the trainer's
        batch."""
        start = time.monotonic()
        if getattr(self.args, "load_debug_rollout_data", None):
            samples, fn_metrics = load_recording(self.args.load_debug_rollout_data, rollout_id), {}
        else:
            output = wrap_rollout_output(self._call(self.rollout_fn, rollout_id, evaluation=False), evaluation=False)
            samples, fn_metrics = flatten_samples(output.samples), output.metrics
        if self.recorder is not None:
            fn_metrics = {**fn_metrics, "rollout/record_s": self.recorder.record(rollout_id, samples)}
        batch, metrics = self.to_batch(samples)
        self.last_samples = [s for s in samples if s.status not in EXCLUDED]  # the trained ones, with their text
        self.last_metrics = {**fn_metrics, **metrics, "rollout/time": time.monotonic() - start}
        logger.info("rollout %d: %s", rollout_id, _summary(self.last_metrics))
        return batch

    def to_batch(self, samples: list[Sample]) -> tuple[RolloutBatch, dict[str, float]]:
        """The trainable samples as a `RolloutBatch` (rewards post-processed), and their metrics."""
        trainable = [s for s in samples if s.status not in EXCLUDED]
        excluded = Counter(s.status.value for s in samples if s.status in EXCLUDED)
        if excluded:
            hint = " (pending: the rollout function never set their status)" if excluded["pending"] else ""
            total = sum(excluded.values())
            logger.warning("%d of %d samples excluded from training: %s%s", total, len(samples), dict(excluded), hint)
        if self.convert_fn is not None:  # the user's conversion replaces post-processing and conversion (slime)
            batch = batch_from_train_data(self.convert_fn(self.args, trainable), trainable)
            raw = [s.get_reward_value(getattr(self.args, "reward_key", None)) for s in trainable]
        else:
            raw, rewards = post_process_rewards(self.args, trainable)
            batch = RolloutBatch.from_samples(trainable, rewards, raw)
        metrics = rollout_metrics(trainable, raw)
        metrics.update({f"rollout/num_excluded_{status}": count for status, count in excluded.items()})
        if getattr(self.args, "log_passrate", False):  # slime's name: passrate/pass@k
            groups = [s.group_index if s.group_index is not None else ("sample", s.index) for s in trainable]
            metrics.update(pass_at_k_metrics(raw, groups, "passrate/"))
        return batch, metrics

    def eval(self, rollout_id: int) -> dict[str, float]:
        """Run the eval function (`--eval-function-path`, else the rollout function with
        evaluation=True) and return its metrics: eval/<dataset> mean reward, pass@k and more. Its data
        ({dataset: {"rewards", "truncated", "samples"}}) stays in `last_eval_data`."""
        output = wrap_rollout_output(self._call(self.eval_fn, rollout_id, evaluation=True), evaluation=True)
        self.last_eval_data = output.data
        metrics = {**eval_metrics(output.data, self.args), **output.metrics}
        logger.info("eval %d: %s", rollout_id, _summary(metrics))
        return metrics

    def _call(self, fn: Any, rollout_id: int, *, evaluation: bool) -> Any:
        result = fn(self.args, rollout_id, self.data_source, evaluation=evaluation)
        return run(result) if inspect.iscoroutine(result) else result

    # ---- state and engines -----------------------------------------------------------------------

    def save(self, rollout_id: int) -> str:
        """Save the data source's state (prompt position, buffer) under `--save`; returns the file."""
        return self.data_source.save(rollout_id)

    def load(self, rollout_id: int | None = None) -> bool:
        """Restore the data source's state from `--load` (None: latest); False for a fresh start."""
        return self.data_source.load(rollout_id)

    def engine_urls(self) -> list[str]:
        """The engines behind the router."""
        return run(_workers(self.router_url))


async def _workers(url: str) -> list[str]:
    async with EngineClient(url) as client:
        return await client.workers()


def post_process_rewards(args: Any, samples: list[Sample]) -> tuple[list[float], list[float]]:
    """(raw_rewards, rewards) of `samples`: `--custom-reward-post-process-path`, else
    `normalize_rewards` (see the module docstring)."""
    path = getattr(args, "custom_reward_post_process_path", None)
    if path:
        raw, rewards = load_plugin(path, flag="--custom-reward-post-process-path")(args, samples)
        if len(raw) != len(samples) or len(rewards) != len(samples):
            raise ValueError(
                f"{path} returned {len(raw)} raw rewards and {len(rewards)} rewards for {len(samples)} samples"
            )
        return [float(r) for r in raw], [float(r) for r in rewards]
    key = getattr(args, "reward_key", None)
    raw = [s.get_reward_value(key) for s in samples]
    groups = [s.group_index if s.group_index is not None else ("sample", s.index) for s in samples]
    return raw, normalize_rewards(args, raw, groups)


def normalize_rewards(args: Any, raw: list[float], group_index: list[Any]) -> list[float]:
    """Group-normalized rewards by group_index for the estimators that want them, else `raw`."""
    estimator = getattr(args, "advantage_estimator", "grpo")
    enabled = getattr(args, "rewards_normalization", not getattr(args, "disable_rewards_normalization", False))
    if not raw or not enabled or estimator not in STD_NORMALIZED + MEAN_NORMALIZED:
        return list(raw)
    use_std = estimator in STD_NORMALIZED and getattr(
        args, "grpo_std_normalization", not getattr(args, "disable_grpo_std_normalization", False)
    )
    rewards = torch.tensor(raw, dtype=torch.float32)
    return group_normalize_rewards(rewards, group_index, grpo_std_normalization=use_std).tolist()


def rollout_metrics(samples: list[Sample], raw_rewards: list[float]) -> dict[str, float]:
    """Reward mean, response length mean/max/median/p90, truncated ratio, prefix-cache hit ratio, groups
    whose rewards are all equal (no GRPO signal), counts."""
    n = max(len(samples), 1)
    lengths = [s.response_length for s in samples]
    ordered = sorted(lengths) or [0]
    prompt_tokens = sum(s.prompt_length for s in samples)
    groups: dict[Any, set[float]] = {}
    for s, r in zip(samples, raw_rewards):
        groups.setdefault(s.group_index if s.group_index is not None else ("sample", s.index), set()).add(r)
    return {
        "rollout/response_len_p50": float(ordered[(len(ordered) - 1) // 2]),
        "rollout/response_len_p90": float(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]),
        "rollout/zero_std_groups": float(sum(len(v) == 1 for v in groups.values())),
        "rollout/num_samples": len(samples),
        "rollout/raw_reward": sum(raw_rewards) / n,
        "rollout/response_len_mean": sum(lengths) / n,
        "rollout/response_len_max": max(lengths, default=0),
        "rollout/truncated_ratio": sum(s.status == Sample.Status.TRUNCATED for s in samples) / n,
        "rollout/cached_token_ratio": sum(s.cached_tokens for s in samples) / max(prompt_tokens, 1),
        "rollout/num_removed": sum(s.remove_sample for s in samples),
    }


def _summary(metrics: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)

    return ", ".join(f"{k.split('/', 1)[-1]}={show(v)}" for k, v in sorted(metrics.items()))
