"""The algorithm demo (README main command until the loop lands) learns its task."""

import pytest

from temper.demo import digit_share, main


def test_digit_share():
    assert digit_share("12 a3") == 0.75
    assert digit_share("") == 0.0


@pytest.mark.slow
def test_demo_reward_rises(tmp_path, capsys):
    rewards = main(["--steps", "30", "--workdir", str(tmp_path)])
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.1 and last > first + 0.4, rewards
    assert "step  29  reward" in capsys.readouterr().out
