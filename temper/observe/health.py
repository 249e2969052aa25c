"""A run's health list: four checks computed from its metrics, each with the numbers behind its verdict.

Each compares the mean of the first `WINDOW` steps ("start") with the mean of the last `WINDOW` ("end"):

- entropy collapse: train/entropy at the end below `ENTROPY_COLLAPSE` x its start (the policy stops
  exploring; GRPO's groups then have no variance to learn from);
- reward flat: rollout/raw_reward gains less than `REWARD_FLAT` from start to end (judged from
  2 x `WINDOW` steps on, so that start and end do not overlap);
- mismatch rising: train/train_rollout_logprob_abs_diff (trainer vs engine log-probs on the same tokens)
  at the end above `MISMATCH_GROWTH` x its start and above `MISMATCH_FLOOR` nats (below it, float noise);
- truncation high: rollout/truncated_ratio at the end above `TRUNCATION_HIGH` (responses cut by
  --rollout-max-response-len: their reward judges an unfinished answer).

A check whose metric the run did not log says so ("not measured"), it is not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from temper.observe.report import REWARD, WINDOW
from temper.observe.run_metrics import RunMetrics

ENTROPY_COLLAPSE = 0.2
REWARD_FLAT = 0.02
MISMATCH_GROWTH = 2.0
MISMATCH_FLOOR = 1e-3
TRUNCATION_HIGH = 0.2

ENTROPY = "train/entropy"
MISMATCH = "train/train_rollout_logprob_abs_diff"
TRUNCATED = "rollout/truncated_ratio"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str
    """"ok", "warn", or "not measured"."""
    detail: str
    """The numbers behind the verdict."""

    def line(self) -> str:
        return f"{self.name}: {self.verdict} — {self.detail}"


def health_checks(run: RunMetrics) -> list[Check]:
    return [entropy_collapse(run), reward_flat(run), mismatch_rising(run), truncation_high(run)]


def entropy_collapse(run: RunMetrics) -> Check:
    name = "entropy collapse"
    means = run.window_means(ENTROPY, WINDOW)
    if means is None:
        return _unmeasured(name, ENTROPY)
    start, end = means
    detail = f"{ENTROPY} {start:.3g} → {end:.3g} nats/token ({_windows()})"
    if start > 0 and end < ENTROPY_COLLAPSE * start:
        return Check(name, "warn", f"{detail}: below {ENTROPY_COLLAPSE:g} x the start")
    return Check(name, "ok", detail)


def reward_flat(run: RunMetrics) -> Check:
    name = "reward flat"
    _, rewards = run.series(REWARD)
    if not rewards:
        return _unmeasured(name, REWARD)
    if len(rewards) < 2 * WINDOW:
        return Check(name, "ok", f"{len(rewards)} steps: too few to judge (needs {2 * WINDOW})")
    start, end = run.window_means(REWARD, WINDOW)
    detail = f"{REWARD} {start:.3f} → {end:.3f} ({_windows()}), best {max(rewards):.3f}"
    if end - start < REWARD_FLAT:
        return Check(name, "warn", f"{detail}: gained less than {REWARD_FLAT:g}")
    return Check(name, "ok", detail)


def mismatch_rising(run: RunMetrics) -> Check:
    name = "mismatch rising"
    means = run.window_means(MISMATCH, WINDOW)
    if means is None:
        return _unmeasured(name, MISMATCH)
    start, end = means
    detail = f"{MISMATCH} {start:.3g} → {end:.3g} nats ({_windows()})"
    if end > MISMATCH_GROWTH * start and end > MISMATCH_FLOOR:
        return Check(name, "warn", f"{detail}: above {MISMATCH_GROWTH:g} x the start and {MISMATCH_FLOOR:g}")
    return Check(name, "ok", detail)


def truncation_high(run: RunMetrics) -> Check:
    name = "truncation high"
    means = run.window_means(TRUNCATED, WINDOW)
    if means is None:
        return _unmeasured(name, TRUNCATED)
    end = means[1]
    detail = f"{end:.0%} of responses cut at --rollout-max-response-len (mean of the last {WINDOW} steps)"
    if end > TRUNCATION_HIGH:
        return Check(name, "warn", f"{detail}: above {TRUNCATION_HIGH:.0%}")
    return Check(name, "ok", detail)


def _unmeasured(name: str, key: str) -> Check:
    return Check(name, "not measured", f"no {key} in the metrics")


def _windows() -> str:
    return f"means of the first and last {WINDOW} steps"
