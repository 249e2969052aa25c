"""The rollout's half of rollout routing replay (temper/rollout/routed_experts.py): the request asks for the
routed experts, the answer's base64 int32 array lands on the sample, and bad answers are named."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from rollout_helpers import fake_engine_app, make_args, serve

from temper.data.buffer import groups_from_state, groups_to_state
from temper.rollout import generate as gen
from temper.rollout.async_loop import run
from temper.rollout.routed_experts import decode, routing_shape
from temper.testing import tiny_model_dir
from temper.types import RolloutBatch, Sample


def encoded(routed: np.ndarray) -> str:
    return base64.b64encode(routed.astype("<i4").tobytes()).decode()


def test_decode_reads_sglang_int32_base64_and_names_bad_sizes():
    routed = np.arange(5 * 3 * 2, dtype=np.int32).reshape(5, 3, 2)
    np.testing.assert_array_equal(decode(encoded(routed), 5, 3, 2), routed)
    with pytest.raises(ValueError, match="holds 30 expert ids; the sample's 6 computed tokens x 3 layers x top-2 make 36"):
        decode(encoded(routed), 6, 3, 2)
    with pytest.raises(ValueError, match="not base64"):
        decode("not base64!", 5, 3, 2)
    with pytest.raises(ValueError, match="not a whole number of int32 ids"):
        decode(base64.b64encode(b"abc").decode(), 1, 1, 1)


def test_routing_shape_of_an_moe_checkpoint_and_a_dense_one():
    config = json.loads((tiny_model_dir("qwen3_moe") / "config.json").read_text())
    assert routing_shape(str(tiny_model_dir("qwen3_moe"))) == (config["num_hidden_layers"], config["num_experts_per_tok"])
    with pytest.raises(ValueError, match="describes no experts"):
        routing_shape(str(tiny_model_dir("qwen3")))


def test_append_output_keeps_the_routing_of_the_whole_sample():
    sample = Sample(tokens=[1, 2, 3])
    routed = np.random.default_rng(0).integers(0, 8, (4, 2, 2)).astype(np.int32)  # 3 prompt + 2 output - 1
    output = {"output_ids": [10, 11], "meta_info": {"finish_reason": {"type": "abort"}, "routed_experts": encoded(routed)}}
    gen.append_output(sample, output, routing=(2, 2))
    np.testing.assert_array_equal(sample.rollout_routed_experts, routed)
    longer = np.random.default_rng(1).integers(0, 8, (6, 2, 2)).astype(np.int32)  # continued: all 7 tokens sent again
    gen.append_output(sample, {"output_ids": [12, 13], "meta_info": {"routed_experts": encoded(longer)}}, routing=(2, 2))
    np.testing.assert_array_equal(sample.rollout_routed_experts, longer)
    with pytest.raises(ValueError, match="has no routed_experts; temper's engine returns them for MoE models"):
        gen.append_output(Sample(tokens=[1]), {"output_ids": [2], "meta_info": {}}, routing=(2, 2))


def test_generate_asks_for_the_routed_experts_under_r3():
    app = fake_engine_app("engine")
    path = tiny_model_dir("qwen3_moe")
    with serve(app) as url:
        args = make_args("--hf-checkpoint", str(path), "--use-rollout-routing-replay")
        args.sglang_router_ip, port = url.removeprefix("http://").split(":")
        args.sglang_router_port = int(port)
        sample = Sample(tokens=[1, 2, 3], group_index=0, index=0)
        with pytest.raises(ValueError, match="has no routed_experts"):  # the fake engine does not return them
            run(gen.generate(args, sample, {"max_new_tokens": 4}), timeout=60)
    _, body, _ = app.state.calls[-1]
    assert body["return_routed_experts"] is True


def test_batches_carry_the_routing_and_buffered_samples_drop_it():
    routed = np.zeros((4, 2, 2), dtype=np.int32)
    samples = [Sample(tokens=[1, 2, 3, 4, 5], response_length=2, rollout_routed_experts=routed, index=0),
               Sample(tokens=[1, 2, 3], response_length=1, index=1)]
    batch = RolloutBatch.from_samples(samples, [1.0, 0.0], [1.0, 0.0])
    assert batch.rollout_routed_experts[0].shape == (4, 2, 2) and batch.rollout_routed_experts[1] is None
    assert batch.select([1]).rollout_routed_experts == [None]
    assert RolloutBatch.from_samples(samples[1:], [0.0], [0.0]).rollout_routed_experts is None
    too_long = Sample(tokens=[1, 2, 3], response_length=1, rollout_routed_experts=routed, index=7)
    with pytest.raises(ValueError, match=r"sample 7: rollout_routed_experts has shape \(4, 2, 2\); expected \[at most 2"):
        RolloutBatch.from_samples([too_long], [0.0], [0.0])
    state = groups_to_state([samples])
    json.dumps(state)  # the data source's state file is JSON
    assert groups_from_state(state)[0][0].rollout_routed_experts is None
