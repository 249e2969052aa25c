"""Which samples go to which optimizer step, data-parallel rank and micro-batch; and packing them.

A rollout batch of N samples is cut, in order, into `num_steps` optimizer steps of N / num_steps
samples. Each step's samples are spread over the data-parallel ranks by token count (longest first,
to the least-loaded rank), and each rank's share is cut into micro-batches: `micro_batch_size`
samples each, or (dynamic batch size) packed first-fit-decreasing under a token budget. Every rank
gets the same number of micro-batches in a step — FSDP's collectives need each rank to run as many
forwards and backwards — by splitting the fullest micro-batches of ranks that have fewer, and, when
nothing is left to split, by padding micro-batches that carry no sample.

A micro-batch is one row of concatenated sequences (no padding tokens) whose position ids restart
at 0 for every sequence, with the row's cumulative sequence starts: the train worker's varlen
attention (attention.py) attends within each sequence only, and Hugging Face's own implementations
(given only the position ids) build a block-diagonal causal mask, so no token attends across a
sequence boundary.

Every function here is a pure function of lengths and settings: each rank computes the whole plan,
identical everywhere, without communicating.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Plan = list[list[list[list[int]]]]
"""plan[step][rank][micro_batch] -> sample positions in the rollout batch (an empty list is padding)."""


def step_positions(num_samples: int, num_steps: int) -> list[list[int]]:
    """Positions of each optimizer step's samples: consecutive, equal slices of the batch."""
    if num_steps < 1 or num_samples % num_steps:
        raise ValueError(
            f"{num_samples} samples do not split into {num_steps} equal optimizer steps; the rollout batch must "
            "hold --global-batch-size x --num-steps-per-rollout samples"
        )
    size = num_samples // num_steps
    return [list(range(s * size, (s + 1) * size)) for s in range(num_steps)]


def split_over_ranks(positions: list[int], lengths: list[int], world_size: int) -> list[list[int]]:
    """Longest-processing-time assignment: longest sample first, to the rank with the fewest tokens.

    Ties go to the lower rank; each rank's share keeps batch order.
    """
    loads = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for pos in sorted(positions, key=lambda p: (-lengths[p], p)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += lengths[pos]
        shares[rank].append(pos)
    return [sorted(share) for share in shares]


def static_micro_batches(positions: list[int], micro_batch_size: int) -> list[list[int]]:
    """Consecutive groups of `micro_batch_size` samples (the last may be shorter)."""
    if micro_batch_size < 1:
        raise ValueError(f"--micro-batch-size must be >= 1, got {micro_batch_size}")
    return [positions[i : i + micro_batch_size] for i in range(0, len(positions), micro_batch_size)]


def dynamic_micro_batches(positions: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """First-fit decreasing under `max_tokens` tokens per micro-batch (--max-tokens-per-gpu).

    A sample longer than the budget gets a micro-batch of its own.
    """
    bins: list[list[int]] = []
    loads: list[int] = []
    for pos in sorted(positions, key=lambda p: (-lengths[p], p)):
        for i, load in enumerate(loads):
            if load + lengths[pos] <= max_tokens:
                bins[i].append(pos)
                loads[i] += lengths[pos]
                break
        else:
            bins.append([pos])
            loads.append(lengths[pos])
    return [sorted(b) for b in bins]


def split_to_count(bins: list[list[int]], lengths: list[int], count: int) -> list[list[int]]:
    """`bins` grown to exactly `count` micro-batches: halve the fullest splittable one, then pad with []."""
    bins = [list(b) for b in bins]
    while len(bins) < count:
        splittable = [i for i, b in enumerate(bins) if len(b) > 1]
        if not splittable:
            bins.extend([] for _ in range(count - len(bins)))
            break
        i = max(splittable, key=lambda j: (sum(lengths[p] for p in bins[j]), -j))
        first, second = split_over_ranks(bins[i], lengths, 2)
        bins[i : i + 1] = [first, second]
    return bins


def plan_micro_batches(
    lengths: list[int],
    num_steps: int,
    world_size: int,
    *,
    micro_batch_size: int = 1,
    max_tokens: int | None = None,
) -> Plan:
    """The whole rollout's plan[step][rank][micro_batch] (see the module docstring).

    lengths: total (prompt + response) length of each sample. max_tokens turns on dynamic packing.
    """
    plan: Plan = []
    for positions in step_positions(len(lengths), num_steps):
        per_rank = []
        for share in split_over_ranks(positions, lengths, world_size):
            if max_tokens is not None:
                per_rank.append(dynamic_micro_batches(share, lengths, max_tokens))
            else:
                per_rank.append(static_micro_batches(share, micro_batch_size))
        count = max(1, max(len(bins) for bins in per_rank))
        plan.append([split_to_count(bins, lengths, count) for bins in per_rank])
    return plan


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """A host tensor on `device`; to CUDA through pinned memory and asynchronously, so the host does not
    wait for the work already queued (a copy from pageable memory would)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass
class MicroBatch:
    """Sequences packed into one row, as the model consumes them.

    S = total tokens of the row, Tr = total response tokens. A padding micro-batch (no samples) holds
    one dummy two-token sequence so that it runs the same modules as a real one; its loss weight is 0.
    """

    positions: list[int]
    """Sample positions in the rollout batch; empty for padding."""
    input_ids: Tensor
    """[1, S] int64."""
    position_ids: Tensor
    """[1, S] int64, restarting at 0 for every sequence."""
    response_index: Tensor
    """[Tr] int64: row positions whose output predicts a response token (token position − 1)."""
    targets: Tensor
    """[Tr] int64: the response tokens."""
    response_lengths: list[int]
    """R_i of each packed sample (sums to Tr)."""
    cu_seqlens: Tensor
    """[N+1] int32: 0, then the running sums of the packed sequences' lengths (ends at S)."""
    max_seqlen: int
    """Length of the longest packed sequence."""
    routed_experts: Tensor | None = None
    """[S, num_hidden_layers, top_k] int32: the engine's experts of each token (R3, see `pack`); -1 rows route
    freely. None: every token routes freely."""

    @property
    def is_padding(self) -> bool:
        return not self.positions

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]

    def to(self, device: torch.device) -> MicroBatch:
        """A copy on `device` (see `to_device`)."""
        return MicroBatch(
            self.positions,
            to_device(self.input_ids, device),
            to_device(self.position_ids, device),
            to_device(self.response_index, device),
            to_device(self.targets, device),
            self.response_lengths,
            to_device(self.cu_seqlens, device),
            self.max_seqlen,
            to_device(self.routed_experts, device) if self.routed_experts is not None else None,
        )

    def split(self, flat: Tensor) -> list[Tensor]:
        """A [Tr, ...] tensor cut into one [R_i, ...] piece per sample."""
        return list(torch.split(flat, self.response_lengths))


def pack(tokens: list[Tensor], response_lengths: list[int], positions: list[int],
         routed_experts: list[Tensor | None] | None = None) -> MicroBatch:
    """Pack the samples at `positions` (their `tokens` [L_i] and R_i) into one row; [] gives padding.
    `routed_experts`: per sample, the engine's routing of its first tokens ([<= L_i, layers, top_k], or
    None), laid out on the row with -1 for the tokens it does not cover."""
    if not positions:
        return _packed_row([torch.zeros(2, dtype=torch.long)], [1], positions=[])
    for p in positions:
        if response_lengths[p] >= len(tokens[p]):
            raise ValueError(
                f"sample at position {p}: response_length {response_lengths[p]} leaves no prompt token in its "
                f"{len(tokens[p])} tokens; a response needs at least one token before it"
            )
    mb = _packed_row([tokens[p] for p in positions], [response_lengths[p] for p in positions], list(positions))
    if routed_experts is not None:
        mb.routed_experts = _packed_routing([tokens[p] for p in positions], [routed_experts[p] for p in positions])
    return mb


def _packed_routing(seqs: list[Tensor], routed: list[Tensor | None]) -> Tensor | None:
    """The samples' routing on the packed row [S, layers, top_k] int32, -1 where a sample has none."""
    shape = next((r.shape[1:] for r in routed if r is not None), None)
    if shape is None:
        return None
    out = torch.full((sum(len(s) for s in seqs), *shape), -1, dtype=torch.int32)
    start = 0
    for seq, r in zip(seqs, routed):
        if r is not None:
            if r.shape[0] > len(seq) or r.shape[1:] != shape:
                raise ValueError(f"routed experts {tuple(r.shape)} do not fit a {len(seq)}-token sample "
                                 f"([<= {len(seq)}, {', '.join(map(str, shape))}])")
            out[start : start + r.shape[0]] = r
        start += len(seq)
    return out


def _packed_row(seqs: list[Tensor], resp_lens: list[int], positions: list[int]) -> MicroBatch:
    starts = torch.tensor([0] + [len(s) for s in seqs]).cumsum(0)
    input_ids = torch.cat(seqs).long()
    position_ids = torch.cat([torch.arange(len(s)) for s in seqs])
    response_index = torch.cat(
        [torch.arange(end - resp - 1, end - 1) for end, resp in zip(starts[1:].tolist(), resp_lens)]
    )
    return MicroBatch(
        positions=positions,
        input_ids=input_ids[None],
        position_ids=position_ids[None],
        response_index=response_index,
        targets=input_ids[response_index + 1],
        response_lengths=list(resp_lens),
        cu_seqlens=starts.to(torch.int32),
        max_seqlen=max(len(s) for s in seqs),
    )
