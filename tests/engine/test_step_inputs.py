"""StepInputs: the host-side layout of one step (positions, slots, block tables, padding rows, sampling rows)."""

from __future__ import annotations

import torch

from temper.engine.attention import TorchPagedAttention
from temper.engine.sampler import noise_keys
from temper.engine.sampling_params import SamplingParams
from temper.engine.scheduler import ScheduledBatch
from temper.engine.sequence import Sequence
from temper.engine.step_inputs import StepInputs

BS = 4


def make_inputs(max_num_seqs=4):
    return StepInputs(torch.device("cpu"), BS, max_model_len=64, max_num_seqs=max_num_seqs, max_num_tokens=32,
                      vocab_size=100)


def seq(name, tokens, table, computed, **params):
    s = Sequence(name, tokens, SamplingParams(**params), seed=len(name))
    s.block_table, s.num_computed_tokens = list(table), computed
    return s


def slot(table, pos):
    return table[pos // BS] * BS + pos % BS


def build(inputs: StepInputs, batch: ScheduledBatch, rows: int, backend):
    """The step's device inputs, as the model runner gets them: `plan` (host), then `load` (device)."""
    return inputs.load(inputs.plan(batch, rows), backend)


class DummyBackend:
    def prepare(self, meta):
        pass


def test_prefill_layout_with_cached_prefix_and_chunk():
    inputs = make_inputs()
    a = seq("a", list(range(10, 19)), [7, 3, 9], computed=4, temperature=0.5)  # 4 cached, 5 new
    b = seq("b", list(range(30, 36)), [1, 2], computed=0, temperature=0)  # a chunk of 3: no sampling
    batch = ScheduledBatch.of([a, b], [5, 3], is_prefill=True)
    x = build(inputs, batch, 2, TorchPagedAttention())
    assert x.input_ids.tolist() == list(range(14, 19)) + [30, 31, 32]
    assert x.positions.tolist() == [4, 5, 6, 7, 8, 0, 1, 2]
    assert x.meta.slot_mapping.tolist() == [slot([7, 3, 9], p) for p in range(4, 9)] + [slot([1, 2], p) for p in range(3)]
    assert x.meta.block_tables.tolist() == [[7, 3, 9], [1, 2, 0]]
    assert x.meta.context_lens.tolist() == [9, 3]
    assert x.meta.query_lens == [5, 3] and x.meta.cached_lens == [4, 0]
    assert x.logits_indices.tolist() == [4] and x.num_samples == 1
    assert x.sampling.temperatures.tolist() == [0.5] and x.sampling.keys.tolist() == [list(noise_keys(a.seed, 0))]
    assert not x.sampling.all_greedy and not x.sampling.needs_filter


def test_decode_padding_rows_and_block_table_updates():
    inputs = make_inputs()
    a = seq("a", list(range(6)), [5, 6], computed=5, temperature=1.0, top_p=0.9)
    b = seq("b", list(range(3)), [8], computed=2, temperature=0)
    x = build(inputs, ScheduledBatch.of([a, b], [1, 1], is_prefill=False), 4, DummyBackend())
    assert x.input_ids.tolist() == [5, 2, 0, 0] and x.positions.tolist() == [5, 2, 0, 0]
    assert x.meta.slot_mapping.tolist() == [slot([5, 6], 5), slot([8], 2), -1, -1]
    assert x.meta.context_lens.tolist() == [6, 3, 0, 0]
    assert x.meta.block_tables.shape == (4, 16) and x.meta.block_tables[:2, :2].tolist() == [[5, 6], [8, 0]]
    assert x.logits_indices is None and x.num_samples == 2
    assert x.sampling.needs_filter and not x.sampling.all_greedy
    assert x.sampling.top_p.tolist() == [torch.tensor(0.9).item(), 1.0]
    assert x.sampling.keys.tolist() == [list(noise_keys(a.seed, a.num_output_tokens)),
                                        list(noise_keys(b.seed, b.num_output_tokens))]
    # b grows a block; a is preempted and comes back with a new table of the same length.
    b.token_ids += [9, 9]
    b.num_computed_tokens = 4
    b.block_table.append(11)
    a.block_table = [2, 4]
    x = build(inputs, ScheduledBatch.of([b, a], [1, 1], is_prefill=False), 2, DummyBackend())
    assert x.meta.block_tables[:, :2].tolist() == [[8, 11], [2, 4]]
    assert x.meta.slot_mapping.tolist() == [slot([8, 11], 4), slot([2, 4], 5)]


def test_records_are_recycled_when_rows_run_out():
    inputs = make_inputs(max_num_seqs=2)  # 4 rows of persistent block tables
    for i in range(10):
        s = seq(f"s{i}", [1, 2, 3], [i], computed=2)
        x = build(inputs, ScheduledBatch.of([s], [1], is_prefill=False), 1, DummyBackend())
        assert x.meta.block_tables[0, 0].item() == i
    assert len(inputs.records) <= 4


def test_decode_views_are_the_views_build_fills():
    inputs = make_inputs()
    ids, positions, slots, context, tables = inputs.decode_views(4)
    assert slots.tolist() == [-1] * 4 and context.tolist() == [0] * 4
    a = seq("a", list(range(6)), [5, 6], computed=5)
    x = build(inputs, ScheduledBatch.of([a], [1], is_prefill=False), 4, DummyBackend())
    for view, built in [(ids, x.input_ids), (positions, x.positions), (slots, x.meta.slot_mapping),
                        (context, x.meta.context_lens), (tables, x.meta.block_tables)]:
        assert view.data_ptr() == built.data_ptr() and view.shape == built.shape
    assert ids.tolist() == [5, 0, 0, 0]
