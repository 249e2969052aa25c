"""Scheduler without a model: prefill/decode steps, token budget, chunking, max_num_seqs, preemption."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from temper.engine.block_manager import BlockManager
from temper.engine.detokenizer import Detokenizer
from temper.engine.sampling_params import SamplingParams
from temper.engine.scheduler import Scheduler
from temper.engine.sequence import Sequence, SequenceStatus
from temper.engine.stop_checker import StopChecker
from temper.testing.tiny_models import tiny_model_dir

BS = 4


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_model_dir("qwen3"))


def make(tokenizer, num_blocks=64, max_num_seqs=8, budget=64, max_model_len=256):
    checker = StopChecker(Detokenizer(tokenizer), [1002], max_model_len)
    return Scheduler(max_num_seqs, budget, BlockManager(num_blocks, BS), checker)


def seq(n, max_new_tokens=8, first=0):
    return Sequence(f"r{first}-{n}", list(range(first, first + n)), SamplingParams(max_new_tokens=max_new_tokens,
                                                                            ignore_eos=True), seed=0)


def fake_step(s: Scheduler, token=5):
    """Run one step with a model that always samples `token`."""
    batch = s.schedule()
    if batch is None:
        return None
    n = sum(batch.sample)
    s.postprocess(batch, [token] * n, [-1.0] * n)
    return batch


def test_prefill_then_decode(tokenizer):
    s = make(tokenizer)
    a, b = seq(5), seq(7, first=100)
    s.add(a), s.add(b)
    batch = fake_step(s)
    assert batch.is_prefill and batch.num_new_tokens == [5, 7] and [len(a), len(b)] == [6, 8]
    batch = fake_step(s)
    assert not batch.is_prefill and batch.num_new_tokens == [1, 1]
    assert a.num_computed_tokens == 6 and len(a) == 7


def test_token_budget_chunks_the_last_prompt(tokenizer):
    s = make(tokenizer, budget=10)
    a, b = seq(6), seq(9, first=100)
    s.add(a), s.add(b)
    batch = fake_step(s)
    assert batch.num_new_tokens == [6, 4] and batch.sample == [True, False]
    assert b.status is SequenceStatus.WAITING and b.num_output_tokens == 0
    batch = fake_step(s)  # prefill has priority: b continues
    assert batch.is_prefill and batch.seqs == [b] and batch.num_new_tokens == [5] and b.num_output_tokens == 1
    assert fake_step(s).num_new_tokens == [1, 1]


def test_max_num_seqs(tokenizer):
    s = make(tokenizer, max_num_seqs=2)
    seqs = [seq(3, first=10 * i) for i in range(3)]
    for x in seqs:
        s.add(x)
    assert fake_step(s).seqs == seqs[:2]
    assert not fake_step(s).is_prefill  # the third waits for a slot
    assert seqs[2].status is SequenceStatus.WAITING


def test_group_of_identical_prompts_prefills_once(tokenizer):
    s = make(tokenizer)
    group = [Sequence(f"g{i}", list(range(21)), SamplingParams(), seed=i) for i in range(4)]
    for x in group:
        s.add(x)
    batch = fake_step(s)
    assert batch.num_new_tokens == [21, 1, 1, 1]
    assert [x.cached_tokens for x in group] == [0, 20, 20, 20]
    assert s.stats.prefill_tokens_computed == 24 and s.stats.cached_tokens == 60


def test_preemption_frees_the_youngest_and_recomputes_its_tokens(tokenizer):
    # 5 blocks of 4: a and b take 2 blocks each for their 8 prompt tokens, then decode needs more.
    s = make(tokenizer, num_blocks=5, max_model_len=20)
    a, b = seq(8, max_new_tokens=6), seq(8, max_new_tokens=6, first=100)
    s.add(a), s.add(b)
    fake_step(s)  # prefill: 4 blocks used, both have 9 tokens
    fake_step(s)  # decode: both need a 3rd block; a gets the last one, b is preempted
    assert s.stats.num_preemptions == 1 and b.status is SequenceStatus.WAITING and b.block_table == []
    assert b.num_output_tokens == 1 and s.waiting[0] is b
    while s.has_unfinished():
        fake_step(s)
    assert a.num_output_tokens == b.num_output_tokens == 6
    assert b.output_token_ids == [5] * 6 and s.block_manager.num_free_blocks == 5


def test_abort_waiting_and_running(tokenizer):
    s = make(tokenizer)
    a, b = seq(5), seq(5, first=100)
    s.add(a)
    fake_step(s)
    s.add(b)
    s.abort(a.request_id), s.abort(b.request_id), s.abort("unknown")
    assert [x.request_id for x in s.pop_finished_early()] == [a.request_id, b.request_id]
    assert a.finish_reason == b.finish_reason == "abort"
    assert not s.has_unfinished() and s.block_manager.num_free_blocks == 64


def test_abort_partially_prefilled(tokenizer):
    s = make(tokenizer, budget=5)
    a = seq(12)
    s.add(a)
    fake_step(s)
    assert a.num_computed_tokens == 5 and a.block_table
    s.abort(a.request_id)
    assert s.schedule() is None and s.block_manager.num_free_blocks == 64
