"""`is_list_style`: slime's per-sample `generate(args, sample, sampling_params)` and the list form
`custom_generate(args, samples, evaluation=False)` told apart by signature; anything else is refused
when the rollout manager starts, naming the flag and both signatures."""

from __future__ import annotations

import pytest
from rollout_helpers import make_args, write_jsonl, write_plugin

from temper.data import PluginError
from temper.rollout import RolloutManager
from temper.rollout.generate_and_rm import generate, is_list_style
from temper.types import Sample


async def per_sample(args, sample, sampling_params): ...


async def per_sample_eval(args, sample, sampling_params, evaluation=False): ...


async def custom_generate(args, samples, evaluation=False): ...


async def annotated(args, group: list[Sample]): ...


def sync_list(args, samples): ...


@pytest.mark.parametrize("fn", [per_sample, per_sample_eval, generate])
def test_per_sample_signatures(fn):
    assert is_list_style(fn) is False


@pytest.mark.parametrize("fn", [custom_generate, annotated, sync_list])
def test_list_signatures(fn):
    assert is_list_style(fn) is True


async def too_few(args, sample): ...


async def singular_with_evaluation(args, sample, evaluation=False): ...


async def plural_with_params(args, samples, sampling_params): ...


async def star_args(*args): ...


@pytest.mark.parametrize("fn", [too_few, singular_with_evaluation, plural_with_params, star_args])
def test_other_signatures_name_the_flag_and_both_forms(fn):
    with pytest.raises(PluginError) as e:
        is_list_style(fn, "gen.py:f")
    message = str(e.value)
    assert message.startswith("--custom-generate-function-path 'gen.py:f'") and fn.__name__ in message
    assert "generate(args, sample, sampling_params" in message
    assert "custom_generate(args, samples, evaluation=False)" in message


def test_a_wrong_signature_stops_the_rollout_manager_at_start(tmp_path):
    plugin = write_plugin(tmp_path, "bad_generate", "async def gen(args, sample):\n    return sample\n")
    data = write_jsonl(tmp_path / "p.jsonl", [{"input": "q"}])
    args = make_args("--prompt-data", data, "--custom-generate-function-path", str(plugin))
    with pytest.raises(PluginError, match=r"--custom-generate-function-path .*bad_generate.py.* gen\(args, sample\)"):
        RolloutManager(args, "http://127.0.0.1:9")
