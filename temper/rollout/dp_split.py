"""Splitting a `RolloutBatch` across data-parallel ranks with balanced token counts.

Each rank gets ⌊N/dp⌋ or ⌈N/dp⌉ samples (the first N mod dp ranks get one more), and the samples are
placed longest first on the rank with the fewest tokens so far that still has room (greedy LPT with a
cardinality bound): the ranks' token totals differ by at most about one sample's length. Groups may
be split across ranks — rewards are already normalized per group when the batch is built. Within a
rank, samples keep the batch's order.
"""

from __future__ import annotations

from temper.types import RolloutBatch


def balanced_partition(lengths: list[int], parts: int) -> list[list[int]]:
    """Positions of `lengths` split into `parts` lists of near-equal count and near-equal sum."""
    if parts < 1:
        raise ValueError(f"dp_size must be >= 1, got {parts}")
    if len(lengths) < parts:
        raise ValueError(
            f"{len(lengths)} samples cannot be split across {parts} data-parallel ranks (each needs at least one)"
        )
    base, extra = divmod(len(lengths), parts)
    room = [base + (rank < extra) for rank in range(parts)]
    totals = [0] * parts
    assigned: list[list[int]] = [[] for _ in range(parts)]
    for position in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        rank = min((r for r in range(parts) if len(assigned[r]) < room[r]), key=lambda r: (totals[r], r))
        assigned[rank].append(position)
        totals[rank] += lengths[position]
    return [sorted(positions) for positions in assigned]


def split_for_dp(batch: RolloutBatch, dp_size: int) -> list[RolloutBatch]:
    """`batch` as `dp_size` sub-batches (rank order) with balanced token counts (prompt + response)."""
    return [batch.select(positions) for positions in balanced_partition(batch.total_lengths, dp_size)]
