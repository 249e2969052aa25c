"""benchmarks/routing_gap.py on CPU: train.py in bf16 on a tiny DeepSeek-V3 with 64 experts, free routing and
R3, one rollout each. The same samples go through both (same seed, the engine computes alike), and replaying the
engine's routing in the trainer narrows the train/rollout gap (0.0023 -> 0.0012 when this was written)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import routing_gap  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("plots_unrasterized")]


def test_rollout_routing_replay_narrows_the_gap(tmp_path):
    results = routing_gap.main(["--arch", "deepseek_v3", "--settings", "free", "r3", "--num-experts", "64",
                                "--top-k", "8", "--num-layers", "4", "--rollouts", "1", "--out", str(tmp_path)])
    free, r3 = results["deepseek_v3"]["free"], results["deepseek_v3"]["r3"]
    assert free["response_tokens"] == r3["response_tokens"] > 500
    assert 0 < r3["gap_mean"] < 0.7 * free["gap_mean"] < 0.01
    assert free["ppo_kl_abs_mean"] == r3["ppo_kl_abs_mean"] == 0.0  # one on-policy step each
    record = json.loads((tmp_path / "routing_gap.json").read_text())
    assert record["results"]["deepseek_v3"]["r3"]["gap_per_step"] == r3["gap_per_step"]
    table = (tmp_path / "routing_gap.md").read_text()
    assert "| deepseek_v3 | r3 | " in table and "num_experts=64" in table
