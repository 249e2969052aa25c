"""Step-0 preflight: checks every run makes on its first weight sync and its first optimizer step.

    preflight = Preflight.of(cfg, fp32=...)
    preflight.weights(check)            # first sync: `check()` compares engine tensors with the trainer's
    preflight.first_step(metrics)       # the first optimizer step's metrics (train worker names)

1. weights: after the first sync the engines hold the trainer's tensors. The --check-weight-update-equal
   check runs on that sync whether the flag is given or not: an exact checksum of every element of every
   tensor sent, in the engines' dtype, compared with each engine's checksum of its copy
   (``POST /weights_checksum``; `weight_check.py`), so one changed element anywhere stops the run. Not
   with --rollout-backend sglang, which has no checksum and whose ``/get_weights_by_name`` serves only
   some models (the flag asks, and compares the first rows of each tensor there).
2. ratio: the first optimizer step of the run trains the policy that produced its old log-probs, so
   ppo_kl = mean(old − logp) is 0 and the ratio exp(old − logp) is 1 on every token (pg_clipfrac 0),
   within `RATIO_TOLERANCE` (fp32 rounding, or bf16 where old log-probs are recomputed in a separate
   forward pass). Not checked where the old log-probs are the engine's (--use-rollout-logprobs) or the
   loss has no ratio (sft, custom losses: no ppo_kl metric).
3. gap: train_rollout_logprob_abs_diff, the mean |trainer − engine| log-prob over the first step's
   tokens, is at most --preflight-max-logprob-diff (default `FP32_GAP` when trainer and engines both
   compute in fp32, else `BF16_GAP`; measured bf16 gaps on H100: 7e-3 for Qwen3-0.6B, 2.8e-2 for 4B).
   Not checked when the samples carry no engine log-probs.

A failure raises `PreflightError`: what was checked, the numbers, the likely causes, and
`--skip-preflight`, which turns all three off. The drivers stop the run with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

FP32_GAP = 1e-3
BF16_GAP = 0.1
RATIO_TOLERANCE = {True: 1e-6, False: 1e-3}
"""Largest |ppo_kl| and pg_clipfrac on the first step, by whether both sides compute in fp32."""
SKIP = "To go on anyway (at your own risk): --skip-preflight."


class PreflightError(RuntimeError):
    """A preflight check failed; the message says what, the numbers, causes, and how to go on."""


@dataclass
class Preflight:
    """The run's step-0 checks (see the module docstring); each runs once."""

    enabled: bool
    fp32: bool
    max_logprob_diff: float
    engine_weights: bool = True
    """Whether the engines can show their weights (temper's engine; SGLang's only for some models)."""
    engine_old_log_probs: bool = False
    """--use-rollout-logprobs: the old log-probs are the engine's, so the ratio is the gap's business."""
    weights_pending: bool = True
    first_step_pending: bool = True
    passed: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, cfg, *, fp32: bool) -> Preflight:
        """`fp32`: the trainer and the engines both compute in float32 (CPU runs of the built-in engine)."""
        limit = cfg.preflight_max_logprob_diff
        return cls(
            enabled=not cfg.skip_preflight,
            fp32=fp32,
            max_logprob_diff=limit if limit is not None else (FP32_GAP if fp32 else BF16_GAP),
            engine_weights=getattr(cfg, "rollout_backend", "builtin") == "builtin",
            engine_old_log_probs=bool(getattr(cfg, "use_rollout_logprobs", False)),
        )

    @property
    def wants_weights(self) -> bool:
        return self.enabled and self.engine_weights and self.weights_pending

    @property
    def wants_first_step(self) -> bool:
        return self.enabled and self.first_step_pending

    def weights(self, check: Callable[[], int], version: int) -> int:
        """Run `check` (RuntimeError naming the tensors that differ; returns how many were compared)
        after a sync to weight `version`; a failure of the first sync's (the preflight's) check is a
        PreflightError."""
        if not self.wants_weights:
            return check()
        self.weights_pending = False
        try:
            compared = check()
        except RuntimeError as e:
            raise PreflightError(weights_message(str(e), version)) from None
        self.passed.append(f"engine weights equal the trainer's after the first sync ({compared} tensors compared, "
                           "every element)")
        return compared

    def first_step(self, metrics: dict[str, float]) -> None:
        """Check the first optimizer step's metrics (ppo_kl, pg_clipfrac, train_rollout_logprob_abs_diff),
        then log what passed."""
        self.first_step_pending = False
        if not self.engine_weights:
            self.passed.append("engine weights not checked (--rollout-backend sglang; --check-weight-update-equal asks)")
        elif self.weights_pending:  # no sync came before the first step: no engines (a replay)
            self.passed.append("engine weights not checked (no engines)")
        self._ratio(metrics)
        self._gap(metrics)
        print(f"preflight passed: {'; '.join(self.passed)}", flush=True)

    def _ratio(self, metrics: dict[str, float]) -> None:
        if "ppo_kl" not in metrics:
            self.passed.append("ratio not checked (this loss has no importance ratio)")
            return
        if self.engine_old_log_probs:
            self.passed.append("ratio not checked (--use-rollout-logprobs: the old log-probs are the engine's)")
            return
        tolerance = RATIO_TOLERANCE[self.fp32]
        kl, clipfrac = metrics["ppo_kl"], metrics.get("pg_clipfrac", 0.0)
        if abs(kl) > tolerance or clipfrac > tolerance:
            raise PreflightError(ratio_message(kl, clipfrac, tolerance))
        self.passed.append(f"first step ratio 1 (ppo_kl {kl:.3g}, pg_clipfrac {clipfrac:.3g}, tolerance {tolerance:g})")

    def _gap(self, metrics: dict[str, float]) -> None:
        gap = metrics.get("train_rollout_logprob_abs_diff")
        if gap is None:
            self.passed.append("trainer-engine log-prob gap not checked (the samples carry no engine log-probs)")
            return
        if not gap <= self.max_logprob_diff:  # NaN fails too
            raise PreflightError(gap_message(gap, self.max_logprob_diff, self.fp32))
        self.passed.append(f"trainer-engine log-prob gap {gap:.3g} <= {self.max_logprob_diff:g}")


def weights_message(detail: str, version: int) -> str:
    return (
        f"preflight: the engines' weights differ from the trainer's after the first weight sync (version {version}). "
        "Checked: a checksum of every element of every tensor the trainer sent, computed exactly in the engines' "
        f"dtype, against each engine's checksum of its copy (POST /weights_checksum). Found: {detail}. Likely "
        "causes: the engine maps a Hugging Face name to the wrong parameter or loads a tensor-parallel shard "
        "wrongly; the engine casts or quantizes "
        "the weights it receives; a custom engine or weight loader changes them; another run writes to the same "
        "--update-weight-disk-dir or shared-memory files. Training on these engines would learn from samples of "
        f"another model. {SKIP}"
    )


def ratio_message(kl: float, clipfrac: float, tolerance: float) -> str:
    return (
        "preflight: the first optimizer step's importance ratio is not 1. Checked: on the first step the old "
        "log-probs come from the weights being trained, so ppo_kl = mean(old - logp) must be 0 and no token "
        f"clipped (tolerance {tolerance:g}). Found: ppo_kl {kl:.6g}, pg_clipfrac {clipfrac:.6g}. Likely causes: the "
        "old log-probs were computed differently from the training forward pass (another temperature, dropout "
        "left on, a non-deterministic kernel, another dtype or micro-batching), a custom advantage or loss "
        f"function that changes them, or weights that changed between the two passes. {SKIP}"
    )


def gap_message(gap: float, limit: float, fp32: bool) -> str:
    default = f"default here {FP32_GAP:g} as trainer and engines compute in fp32" if fp32 else (
        f"default here {BF16_GAP:g}, for bf16"
    )  # fmt: skip
    return (
        "preflight: the trainer and the engines disagree on the log-probs of the rollout's tokens. Checked: "
        "train/train_rollout_logprob_abs_diff, the mean |trainer - engine| log-prob of the first step's tokens. "
        f"Found: {gap:.6g}, above {limit:g} (--preflight-max-logprob-diff; {default}; bf16 gaps measured on H100: "
        "7e-3 for Qwen3-0.6B, 2.8e-2 for Qwen3-4B). Likely causes: engine weights that are not the trainer's; "
        "sampling and training at different temperatures (--rollout-temperature); top-p/top-k sampling whose "
        "log-probs come from the truncated distribution; an engine that implements the model differently from "
        "Hugging Face (rope scaling, attention, MoE routing) or in another dtype; replayed samples recorded with "
        f"another model. A larger gap that you expect: raise --preflight-max-logprob-diff. {SKIP}"
    )
