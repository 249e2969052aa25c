"""Sample and RolloutBatch: the objects that cross part boundaries."""

import pytest
import torch

from temper.types import RolloutBatch, Sample


def prompt_sample(**kw) -> Sample:
    return Sample(index=3, group_index=1, prompt="2+2=", tokens=[10, 11, 12], **kw)


def test_append_multi_turn_keeps_masks_and_log_probs_aligned():
    s = prompt_sample()
    s.append_response_tokens([20, 21], [-0.5, -0.25], text="ab", weight_version="3")
    s.append_response_tokens([30, 31, 32], trainable=False, text="<tool>")
    s.append_response_tokens([40], [-1.0], finish_reason="stop", text="c", weight_version="4")
    assert s.tokens == [10, 11, 12, 20, 21, 30, 31, 32, 40]
    assert s.response_length == 6 and s.prompt_length == 3
    assert s.loss_mask == [1, 1, 0, 0, 0, 1]
    assert s.rollout_log_probs == [-0.5, -0.25, 0.0, 0.0, 0.0, -1.0]
    assert s.effective_response_length == 3
    assert s.response == "ab<tool>c"
    assert s.weight_versions == ["3", "4"]
    assert s.status is Sample.Status.COMPLETED


@pytest.mark.parametrize("reason, status", [("stop", "COMPLETED"), ("length", "TRUNCATED"), ("abort", "ABORTED")])
def test_finish_reason_sets_status(reason, status):
    s = prompt_sample()
    s.append_response_tokens([1], [-0.1], finish_reason=reason)
    assert s.status is Sample.Status[status]


def test_append_rejects_misaligned_log_probs():
    with pytest.raises(ValueError, match="2 tokens but 1 log-probs"):
        prompt_sample().append_response_tokens([1, 2], [-0.1])
    with pytest.raises(ValueError, match="finish_reason must be one of"):
        prompt_sample().append_response_tokens([1], [-0.1], finish_reason="eos")


def test_dict_round_trip_and_unknown_keys():
    s = prompt_sample(label="4", reward={"score": 1.0}, metadata={"src": "gsm8k"})
    s.append_response_tokens([5], [-0.2], finish_reason="length")
    d = s.to_dict()
    assert d["status"] == "truncated"
    assert Sample.from_dict(d) == s
    back = Sample.from_dict({**d, "teacher_log_probs": [0.1]})
    assert back.metadata["extra"] == {"teacher_log_probs": [0.1]} and back.metadata["src"] == "gsm8k"


def test_reward_value():
    assert prompt_sample(reward=0.5).get_reward_value() == 0.5
    assert prompt_sample(reward={"score": -1.0, "acc": False}).get_reward_value("score") == -1.0
    with pytest.raises(ValueError, match="set --reward-key"):
        prompt_sample(reward={"score": 1.0}).get_reward_value()
    with pytest.raises(ValueError, match="no reward"):
        prompt_sample().get_reward_value()


def test_rollout_batch_from_samples_and_select():
    samples = []
    for i in range(3):
        s = Sample(index=i, group_index=i // 2, tokens=[1, 2])
        s.append_response_tokens([3] * (i + 1), [-0.1] * (i + 1), finish_reason="length" if i == 2 else "stop")
        samples.append(s)
    samples[1].remove_sample = True
    batch = RolloutBatch.from_samples(samples, rewards=[0.5, -0.5, 0.0], raw_rewards=[1.0, 0.0, 0.5])
    assert len(batch) == 3 and batch.total_lengths == [3, 4, 5] and batch.response_lengths == [1, 2, 3]
    assert torch.equal(batch.loss_masks[1], torch.zeros(2))  # removed from the loss
    assert torch.equal(batch.loss_masks[2], torch.ones(3))
    assert batch.truncated == [False, False, True]
    assert batch.group_indices == [0, 0, 1]
    part = batch.select([2, 0])
    assert part.sample_indices == [2, 0]
    assert torch.equal(part.rewards, torch.tensor([0.0, 0.5]))
    assert torch.allclose(part.rollout_log_probs[0], torch.full((3,), -0.1))


def test_rollout_batch_checks_mask_length():
    s = Sample(index=0, tokens=[1, 2], response_length=1, loss_mask=[1, 1])
    with pytest.raises(ValueError, match="loss_mask has 2 entries, response_length is 1"):
        RolloutBatch.from_samples([s], [0.0], [0.0])
