"""SamplingParams defaults, normalisation and validation messages."""

from __future__ import annotations

import math

import pytest

from temper.engine.sampling_params import SamplingParams


def test_defaults_and_normalisation():
    p = SamplingParams(stop="</answer>", stop_token_ids=None)
    assert p.stop == ["</answer>"] and p.stop_token_ids == []
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.max_new_tokens, p.n, p.seed) == (1.0, 1.0, -1, 0.0, 128, 1, None)
    p.validate()
    assert SamplingParams(temperature=0).greedy and not SamplingParams().greedy


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, r"temperature must be a non-negative finite number, got -0.1"),
        ({"temperature": math.inf}, r"temperature must be a non-negative finite number"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"min_p": -1}, r"min_p must be in \[0, 1\], got -1"),
        ({"top_k": 0}, r"top_k must be -1 \(disable\) or at least 1, got 0"),
        ({"top_k": 2.5}, r"top_k must be -1"),
        ({"max_new_tokens": -1}, r"max_new_tokens must be at least 0"),
        ({"n": 0}, r"n must be at least 1, got 0"),
        ({"seed": "1"}, r"seed must be None or a 64-bit integer"),
        ({"stop": ["a"] * 33}, r"at most 32 stop strings are allowed, got 33"),
        ({"stop": [""]}, r"stop must be a string or a list of non-empty strings"),
        ({"stop_token_ids": [-3]}, r"stop_token_ids must be a list of non-negative integers"),
        ({"ignore_eos": 1}, r"ignore_eos must be a bool"),
        ({"temperature": True}, r"temperature must be"),
    ],
)
def test_validate_names_field_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs).validate()


def test_valid_edge_values():
    SamplingParams(temperature=0, top_p=1, top_k=1, min_p=1, max_new_tokens=0, seed=-(2**63)).validate()
    SamplingParams(max_new_tokens=None, top_k=-1, seed=2**64 - 1).validate()
