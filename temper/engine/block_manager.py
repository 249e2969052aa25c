"""Paged KV-cache blocks with reference counts and prefix caching.

The KV cache is `num_blocks` blocks of `block_size` token slots. A sequence owns a block table (list
of block ids); token i of the sequence lives in slot ``block_table[i // block_size] * block_size +
i % block_size``.

Prefix caching: a FULL block is identified by a hash of its token ids chained with the hash of the
block before it, so equal hashes mean equal prefixes (token ids are compared too, so a hash collision
can only cost a miss). A block is registered under its hash by `commit()` when the scheduler schedules
the computation of its last token, i.e. before its K/V is actually written. That is safe because a
sequence that hits such a block in the same step is in the same forward pass, and attention writes
every new K/V of the batch into the cache before any sequence reads from it (see `attention.py`); it
is what lets the n samples of one GRPO prompt, admitted together, prefill the prompt once.

Freed blocks (reference count 0) keep their hash and sit in an LRU free list: a later request with the
same prefix takes them back; they are evicted (hash dropped) only when the free list hands them out
for new content. `flush()` forgets every hash (after a weight update the cached K/V are stale).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from temper.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


def block_hash(token_ids: tuple[int, ...], prev_hash: int | None) -> int:
    # Python's hash of a tuple of ints is not randomized per process, so this is stable.
    return hash((prev_hash, token_ids))


class BlockManager:
    """Allocates KV blocks to sequences; counts prefix-cache hits."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.hash_to_block: dict[int, int] = {}
        # Insertion order is eviction order: the block freed longest ago is reused first.
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- admission -------------------------------------------------------------------------
    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._match_prefix(seq)
        needed = self.blocks_for(len(seq)) - sum(1 for b in hits if self.blocks[b].ref_count > 0)
        return needed <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> int:
        """Give `seq` blocks for all its tokens, reusing cached prefix blocks; returns cached tokens."""
        assert not seq.block_table, "sequence already has blocks"
        hits = self._match_prefix(seq)
        for block_id in hits:
            self._take(block_id)
            seq.block_table.append(block_id)
        seq.num_hashed_blocks = len(hits)
        for _ in range(self.blocks_for(len(seq)) - len(hits)):
            seq.block_table.append(self._take_fresh())
        return len(hits) * self.block_size

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Ids of the cached blocks that hold seq's leading full blocks.

        At most (len - 1) // block_size blocks: the last token is always computed, since its
        logits are needed to sample, and a shared block must never be written to.
        """
        if not self.enable_prefix_caching:
            return []
        hits = []
        for i in range((len(seq) - 1) // self.block_size):
            h = self._hash_of(seq, i)
            block_id = self.hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tuple(seq.block_tokens(i, self.block_size)):
                break
            hits.append(block_id)
        return hits

    def _hash_of(self, seq: Sequence, index: int) -> int:
        while len(seq.block_hashes) <= index:
            i = len(seq.block_hashes)
            prev = seq.block_hashes[i - 1] if i else None
            seq.block_hashes.append(block_hash(tuple(seq.block_tokens(i, self.block_size)), prev))
        return seq.block_hashes[index]

    # ---- growth and registration ---------------------------------------------------------
    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(seq.block_table) <= self.num_free_blocks

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Make sure seq has slots for its first `num_tokens` tokens."""
        while len(seq.block_table) < self.blocks_for(num_tokens):
            seq.block_table.append(self._take_fresh())

    def commit(self, seq: Sequence, num_tokens: int) -> None:
        """Register seq's full blocks within its first `num_tokens` tokens (scheduled for compute)."""
        if not self.enable_prefix_caching:
            return
        for i in range(seq.num_hashed_blocks, num_tokens // self.block_size):
            block = self.blocks[seq.block_table[i]]
            block.hash = self._hash_of(seq, i)
            block.token_ids = tuple(seq.block_tokens(i, self.block_size))
            self.hash_to_block[block.hash] = block.block_id
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, num_tokens // self.block_size)

    # ---- release ----------------------------------------------------------------------------
    def free_seq(self, seq: Sequence) -> None:
        # Tail blocks go to the free list first, so they are evicted before the shared prefix.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table = []
        seq.num_hashed_blocks = 0

    def flush(self) -> None:
        """Forget every cached prefix (blocks in use keep their content but are no longer shared)."""
        self.hash_to_block.clear()
        for block in self.blocks:
            block.hash = None
            block.token_ids = ()

    # ---- internals --------------------------------------------------------------------------
    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def _take_fresh(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
            del self.hash_to_block[block.hash]
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block_id
