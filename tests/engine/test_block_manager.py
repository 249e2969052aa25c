"""BlockManager: allocation, reference counts, chained prefix hashes, LRU reuse, flush."""

from __future__ import annotations

from temper.engine.block_manager import BlockManager
from temper.engine.sampling_params import SamplingParams
from temper.engine.sequence import Sequence

BS = 4


def seq(tokens: list[int]) -> Sequence:
    return Sequence("r", tokens, SamplingParams(), seed=0)


def admit(bm: BlockManager, s: Sequence) -> int:
    assert bm.can_allocate(s)
    cached = bm.allocate(s)
    bm.commit(s, len(s))  # as the scheduler does when the whole prompt is scheduled
    return cached


def test_allocate_and_free_return_blocks():
    bm = BlockManager(8, BS)
    s = seq(list(range(10)))
    assert admit(bm, s) == 0
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    bm.free_seq(s)
    assert bm.num_free_blocks == 8 and s.block_table == []


def test_identical_prompts_share_full_blocks_but_not_the_last_token():
    bm = BlockManager(16, BS)
    prompt = list(range(10))  # 2 full blocks + 2 tokens
    a, b = seq(prompt), seq(prompt)
    admit(bm, a)
    assert admit(bm, b) == 8
    assert a.block_table[:2] == b.block_table[:2] and a.block_table[2] != b.block_table[2]
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]
    # Block-aligned prompt: the last block is recomputed, never shared (its last token needs logits).
    c, d = seq(list(range(8))), seq(list(range(8)))
    admit(bm, c)
    assert admit(bm, d) == 4


def test_hashes_chain_on_the_prefix():
    bm = BlockManager(16, BS)
    admit(bm, seq([1, 2, 3, 4, 5, 6, 7, 8, 9]))
    # Same second block after a different first block: no hit at all.
    assert admit(bm, seq([0, 2, 3, 4, 5, 6, 7, 8, 9])) == 0
    # Same first block, different second block: one block.
    assert admit(bm, seq([1, 2, 3, 4, 0, 6, 7, 8, 9])) == 4


def test_freed_blocks_stay_cached_until_evicted():
    bm = BlockManager(6, BS)
    a = seq(list(range(9)))
    admit(bm, a)
    bm.free_seq(a)
    b = seq(list(range(9)))
    assert bm.can_allocate(b) and admit(bm, b) == 8
    bm.free_seq(b)
    # A request needing every block evicts them.
    c = seq(list(range(100, 124)))
    admit(bm, c)
    bm.free_seq(c)
    assert admit(bm, seq(list(range(9)))) == 0


def test_lru_evicts_the_tail_before_the_shared_prefix():
    bm = BlockManager(5, BS)
    a = seq(list(range(9)))  # blocks p0, p1, tail
    admit(bm, a)
    prefix = a.block_table[:2]
    bm.free_seq(a)
    # b needs 3 fresh blocks: the 2 never-used ones, then a's tail (freed before its prefix).
    b = seq([50, 51, 52, 53, 54, 55, 56, 57, 58])
    admit(bm, b)
    assert not set(prefix) & set(b.block_table)
    bm.free_seq(b)
    assert admit(bm, seq(list(range(9)))) == 8


def test_can_allocate_counts_hits_on_blocks_in_use():
    bm = BlockManager(4, BS)
    a = seq(list(range(13)))  # 4 blocks: the whole pool
    admit(bm, a)
    b = seq(list(range(13)))  # shares 3 blocks with a, needs 1 fresh: none free
    assert not bm.can_allocate(b)
    bm.free_seq(a)
    assert bm.can_allocate(b)


def test_grow_and_commit_register_decode_blocks():
    bm = BlockManager(8, BS)
    a = seq([1, 2, 3])
    admit(bm, a)
    for t in range(4, 10):  # decode appends tokens one by one
        a.append_token(t, 0.0)
        assert bm.can_grow(a, len(a))
        bm.grow(a, len(a))
        bm.commit(a, len(a))
    assert len(a.block_table) == 3 and a.num_hashed_blocks == 2
    b = seq(list(range(1, 10)) + [99])
    assert admit(bm, b) == 8


def test_flush_forgets_prefixes():
    bm = BlockManager(8, BS)
    a = seq(list(range(9)))
    admit(bm, a)
    bm.free_seq(a)
    bm.flush()
    assert admit(bm, seq(list(range(9)))) == 0 and bm.hash_to_block


def test_prefix_caching_disabled():
    bm = BlockManager(8, BS, enable_prefix_caching=False)
    admit(bm, seq(list(range(9))))
    assert admit(bm, seq(list(range(9)))) == 0 and not bm.hash_to_block
