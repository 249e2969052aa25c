"""benchmarks/engine_moe.py: the MoE roofline's arithmetic against hand-computed numbers, and the whole
benchmark on CPU with tiny shapes (--smoke: every part in-process, seconds)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import engine_moe  # noqa: E402
from engine_workload import ModelBytes, decode_schedule, distinct_experts, model_bytes, moe_roofline  # noqa: E402

from temper.testing.tiny_models import make_config  # noqa: E402

# 100 dense bytes a step, 2 MoE layers of 4 experts of 10 bytes, top-2, 1 byte of K/V per context token.
SMALL = ModelBytes(dense=100, expert=10, moe_layers=2, num_experts=4, top_k=2, kv_token=1, active_params=0,
                   attention_flops=0)


def test_tiny_qwen3_moe_bytes_by_hand():
    # hidden 128, 2 layers, 4 heads / 2 KV heads of 32, 8 experts of 64, top-2, vocab 1024 tied
    layer = 128 * (4 * 32 + 2 * 2 * 32) + 4 * 32 * 128 + 2 * 32 + 2 * 128 + 8 * 128  # qkv, o, q/k norm, norms, router
    head = 1024 * 128
    dense = 2 * layer + 128 + head
    assert model_bytes(make_config("qwen3_moe")) == ModelBytes(
        dense=2 * dense, expert=2 * 3 * 128 * 64, moe_layers=2, num_experts=8, top_k=2, kv_token=2 * 2 * 2 * 32 * 2,
        active_params=dense - head + 2 * 2 * 3 * 128 * 64, attention_flops=2 * 2 * 2 * 4 * 32)


def test_distinct_experts_uniform():
    picks = [[0.5] * 4, [0.5] * 4]  # top-2 of 4, two layers: E (1 - (1 - k/E)^B) each
    assert distinct_experts(1, picks) == pytest.approx(2 * 2.0)
    assert distinct_experts(2, picks) == pytest.approx(2 * 3.0)
    assert distinct_experts(3, [[1.0, 1.0, 0.0, 0.0]]) == pytest.approx(2.0)  # a router that always picks 0 and 1


def test_decode_schedule_and_roofline_by_hand():
    # prompts 2 and 3 tokens, outputs 3 and 2: request 0 decodes twice (contexts 3, 4), request 1 once (4)
    assert decode_schedule([2, 3], [3, 2]) == [(2, 3 + 4), (1, 4)]
    # a cache of 5 tokens holds one request at a time (final lengths 5 and 5)
    assert decode_schedule([2, 3], [3, 2], capacity=5) == [(1, 3), (1, 4), (1, 4)]
    assert decode_schedule([2, 3], [3, 2], max_seqs=1) == [(1, 3), (1, 4), (1, 4)]
    # together: (100 + 10 * 6 + 7) + (100 + 10 * 4 + 4) = 311 decode bytes; one prefill step reads all 180 weight
    # bytes; at 491 bytes/s, 5 tokens in one second
    roof = moe_roofline(SMALL, [[0, 0], [0, 0, 0]], [3, 2], bandwidth=491.0, matmul_flops=1.0)
    assert (roof["decode_bytes"], roof["expert_read_bytes"], roof["kv_read_bytes"]) == (311, 100, 11)
    assert roof["seconds"] == pytest.approx(1.0) and roof["tok_per_s"] == pytest.approx(5.0)
    one_at_a_time = moe_roofline(SMALL, [2, 3], [3, 2], bandwidth=611.0, matmul_flops=1.0, capacity=5)
    assert one_at_a_time["decode_bytes"] == 143 + 144 + 144 and one_at_a_time["seconds"] == pytest.approx(1.0)
    # prefill only: 2 FLOPs per active parameter and prompt token, attention's per (query, key) pair
    prefill = moe_roofline(dataclasses.replace(SMALL, active_params=3, attention_flops=2), [2, 3], [1, 1],
                           bandwidth=1e30, matmul_flops=1.0)
    assert prefill["decode_steps"] == 0 and prefill["prefill_flops"] == 2 * 3 * 5 + 2 * (3 + 6)


@pytest.mark.slow  # about 15 s on the 2-core CPU machine: every part (bandwidth, the parity parts, two engines and their HF runs)
def test_smoke_run(capsys):
    results = engine_moe.main(["--smoke"])
    kinds = [r["kind"] for r in results]
    assert "failed" not in kinds and "error" not in kinds, results
    runs = {r["name"]: r for r in results if r["kind"] == "throughput"}
    assert set(runs) == {"moonlight", "moonlight-hf", "qwen3-30b", "qwen3-30b-hf"}
    assert all(r["output_tokens"] > 0 and not r["partial"] for r in runs.values())
    parity = {r["name"]: r for r in results if r["kind"] == "parity"}
    assert set(parity) == set(engine_moe.PARITY) and all(p["passed"] for p in parity.values())
    for routing in (r for r in results if r["kind"] == "routing"):  # tiny models: top-2
        assert all(sum(row) == pytest.approx(2, abs=1e-3) for row in routing["pick_probs"])
    summary = capsys.readouterr().out.split("===== engine MoE summary =====")[1]
    assert "qwen3-30b-hf" in summary and "x HF" in summary and "parity parity-glm4" in summary
