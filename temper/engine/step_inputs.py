"""`StepInputs`: a `ScheduledBatch` turned into the tensors of one forward pass, with one host-to-device copy.

Everything a step needs (token ids, positions, cache slots, context lengths, block tables, the rows to
sample, the sampling settings and noise keys) is computed on the host with numpy into one pinned
int64 buffer and one pinned float32 buffer, then copied with two asynchronous copies into device
buffers of the same layout; the step's tensors are views of those. Nothing waits for the GPU here.

Decode steps can be padded to `rows` >= batch size (a CUDA-graph bucket): padding rows have token 0 at
position 0, slot -1 (the KV write skips it) and context length 0 (attention writes zeros). For a given
row count the decode layout is always the same, so the views a CUDA graph captured stay the inputs of
every later replay of that bucket (`decode_views`).

A sequence with a pending token (overlapped scheduling: sampled by the step still in flight) gets
its input id on the device, copied from that step's sampled tokens after the host-to-device copy.

Per sequence, the builder keeps a record: its row in a persistent host copy of the block tables
(updated only with blocks appended since the last step; rewritten when the block manager gave the
sequence a new table, after preemption) and its sampling settings. A batch's block table is then
one numpy gather instead of a Python loop over every block of every sequence.

Building is two halves: `plan` (host: fills the host buffers from the batch's sequences, returns a
`StepPlan`) and `load` (device: the copies and the step's tensor views). Tensor-parallel workers have
no sequences: they `receive` rank 0's `StepPlan` (the host buffers without the block tables, plus the
table rows written since the last step, so a decode step costs a few bytes per sequence) into their
own buffers, then `load` it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from temper.engine.attention import AttentionMetadata
from temper.engine.sampler import SamplingTensors, noise_keys_array, seed_hash
from temper.engine.scheduler import ScheduledBatch
from temper.engine.sequence import Sequence


@dataclass
class ModelInputs:
    """input_ids, positions: [rows] int64 (rows = new tokens, or the padded decode batch).
    logits_indices: [S] rows of the hidden states to sample from, None when every row of a decode
    batch samples (rows beyond the batch are padding). num_samples: S. sampling: settings of the S
    sampling rows."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_indices: torch.Tensor | None
    num_samples: int
    sampling: SamplingTensors | None


@dataclass
class StepPlan:
    """One step as laid out on the host: what `load` needs, and what tensor-parallel workers receive.

    Layout sizes: tokens (new tokens, or padded decode rows), rows (sequences, padded), width (block
    table columns), samples (logits rows), pending (rows whose input id is the previous step's token).
    query_lens, cached_lens: [num_seqs] per sequence. graph: replay the decode CUDA graph of `rows`.
    head, tail: the int buffer before and after the block tables; floats: the float buffer (on the
    builder, views of its host buffers). table_rows: [num_seqs] rows of the persistent block tables;
    table_writes: (row, first column, block ids) written into them since the previous plan.
    """

    is_prefill: bool
    num_seqs: int
    tokens: int
    rows: int
    width: int
    samples: int
    pending: int
    query_lens: list[int]
    cached_lens: list[int]
    has_logits_rows: bool
    num_samples: int
    all_greedy: bool
    needs_filter: bool
    head: np.ndarray
    tail: np.ndarray
    floats: np.ndarray
    table_rows: np.ndarray
    table_writes: list[tuple[int, int, list[int]]]
    graph: bool = False


# The segments of the step's int64 buffer, in order (see `StepInputs._layout`).
LAYOUT = ("input_ids", "positions", "slots", "context", "tables", "logits", "keys", "top_k", "pending")


@dataclass
class _Record:
    table: list[int]  # the seq.block_table list last copied into `row` (identity, not equality)
    synced: int  # leading entries of `table` already in the row
    row: int
    sampling: tuple[float, ...]  # temperature (0: greedy), top_k, top_p, min_p, filtered (0/1)
    seed_hash: int  # `sampler.seed_hash(seq.seed)`


class StepInputs:
    def __init__(self, device: torch.device, block_size: int, max_model_len: int, max_num_seqs: int,
                 max_num_tokens: int, vocab_size: int):
        self.device, self.block_size, self.vocab_size = device, block_size, vocab_size
        self.width = -(-max_model_len // block_size)  # decode block-table width (fixed for CUDA graphs)
        max_rows = max(max_num_seqs, 1)
        # Prefill: 3 per token + (width + 5) per sequence; decode: (width + 10) per row; alignment padding.
        capacity = 3 * max(max_num_tokens, max_rows) + max_rows * (self.width + 10) + 2 * len(LAYOUT)
        pinned = device.type == "cuda"
        self.host_i = torch.zeros(capacity, dtype=torch.int64, pin_memory=pinned)
        self.host_f = torch.zeros(3 * max_rows, dtype=torch.float32, pin_memory=pinned)
        self.dev_i = torch.zeros(capacity, dtype=torch.int64, device=device) if pinned else self.host_i
        self.dev_f = torch.zeros(3 * max_rows, dtype=torch.float32, device=device) if pinned else self.host_f
        self.np_i, self.np_f = self.host_i.numpy(), self.host_f.numpy()
        self.copied = torch.cuda.Event() if pinned else None  # the last copy out of the host buffers
        self.tables = np.zeros((2 * max_rows, self.width), dtype=np.int64)
        self.records: dict[Sequence, _Record] = {}
        self.table_writes: list[tuple[int, int, list[int]]] = []  # since the last plan (see `StepPlan`)
        self.free_rows = list(range(2 * max_rows - 1, -1, -1))

    # ---- layout ---------------------------------------------------------------------------
    def _layout(self, tokens: int, rows: int, width: int, samples: int, pending: int = 0) -> dict[str, slice]:
        """Each segment starts 16-byte aligned: kernels get device views of them as pointer arguments,
        and Triton compiles a separate variant for a misaligned pointer."""
        sizes = dict(zip(LAYOUT, (tokens, tokens, tokens, rows, rows * width, samples, 2 * samples, samples,
                                  2 * pending), strict=True))
        out, offset = {}, 0
        for name, size in sizes.items():
            offset += offset % 2
            out[name] = slice(offset, offset + size)
            offset += size
        if offset > len(self.np_i):
            raise RuntimeError(f"step inputs need {offset} slots, the buffer has {len(self.np_i)}: a step larger "
                               "than max_num_batched_tokens / max_num_seqs / max_model_len allow")
        return out

    def decode_views(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, positions, slots, context_lens, block_tables) device views of a `rows`-row decode
        step; filled with padding values (for a CUDA graph's capture)."""
        lay = self._layout(rows, rows, self.width, 0)
        self._wait()
        self.np_i[lay["input_ids"]] = 0
        self.np_i[lay["positions"]] = 0
        self.np_i[lay["slots"]] = -1
        self.np_i[lay["context"]] = 0
        self.np_i[lay["tables"]] = 0
        self._copy(lay["tables"].stop, 0)
        d = self.dev_i
        return (d[lay["input_ids"]], d[lay["positions"]], d[lay["slots"]], d[lay["context"]],
                d[lay["tables"]].view(rows, self.width))

    # ---- one step -------------------------------------------------------------------------
    def plan(self, batch: ScheduledBatch, rows: int, previous_rows: dict[Sequence, int] | None = None,
             graph: bool = False) -> StepPlan:
        """Fill the host buffers for `batch`; a decode batch is padded to `rows` rows (>= its size).
        `previous_rows`: {seq: index} of the sampled tokens of the step in flight, whose tokens are
        the pending input ids of this one."""
        self._wait()
        seqs, counts = batch.seqs, batch.num_new_tokens
        num_seqs = len(seqs)
        records = self._records(seqs)
        cached = np.fromiter((s.num_computed_tokens for s in seqs), np.int64, num_seqs)
        sampling = [i for i, sample in enumerate(batch.sample) if sample]
        if batch.is_prefill:
            ids = list(chain.from_iterable(s.token_ids[c : c + n] for s, c, n in zip(seqs, cached.tolist(), counts)))
            n = np.asarray(counts, dtype=np.int64)
            seq_index = np.repeat(np.arange(num_seqs), n)
            starts = np.cumsum(n) - n
            positions = np.arange(len(ids)) - starts[seq_index] + cached[seq_index]
            rows, tokens = num_seqs, len(ids)
            width = max(len(s.block_table) for s in seqs)
            logits_rows = (starts + n - 1)[sampling]
        else:
            ids = [0 if s.num_pending else s.token_ids[c] for s, c in zip(seqs, cached.tolist())]
            n = np.ones(num_seqs, dtype=np.int64)
            seq_index, positions = np.arange(num_seqs), cached
            tokens, width, logits_rows = rows, self.width, None
        pending = [(i, previous_rows[s]) for i, s in enumerate(seqs) if s.num_pending]
        samples = len(sampling) if batch.is_prefill else num_seqs
        lay = self._layout(tokens, rows, width, samples, len(pending))
        a = self.np_i
        table_rows = np.fromiter((r.row for r in records), np.int64, num_seqs)
        table = self._gather_tables(lay, rows, width, table_rows)
        slots = table[seq_index, positions // self.block_size] * self.block_size + positions % self.block_size
        _fill(a[lay["input_ids"]], ids, 0)
        _fill(a[lay["positions"]], positions, 0)
        _fill(a[lay["slots"]], slots, -1)
        _fill(a[lay["context"]], cached + n, 0)
        if logits_rows is not None:
            a[lay["logits"]] = logits_rows
        if pending:
            a[lay["pending"]] = np.asarray(pending, dtype=np.int64).T.reshape(-1)
        sample_records = [records[i] for i in sampling]
        num_floats = self._sampling([seqs[i] for i in sampling], sample_records, lay)
        settings = [r.sampling for r in sample_records]
        writes, self.table_writes = self.table_writes, []
        return StepPlan(
            is_prefill=batch.is_prefill, num_seqs=num_seqs, tokens=tokens, rows=rows, width=width, samples=samples,
            pending=len(pending), query_lens=list(counts), cached_lens=cached.tolist(),
            has_logits_rows=logits_rows is not None, num_samples=len(sampling),
            all_greedy=all(s[0] == 0 for s in settings), needs_filter=any(s[4] for s in settings),
            head=a[: lay["tables"].start], tail=a[lay["tables"].stop : lay["pending"].stop],
            floats=self.np_f[:num_floats], table_rows=table_rows, table_writes=writes, graph=graph,
        )

    def receive(self, plan: StepPlan) -> None:
        """A tensor-parallel worker: fill the host buffers with rank 0's `plan` (then `load` it)."""
        self._wait()
        for row, start, blocks in plan.table_writes:
            self.tables[row, start : start + len(blocks)] = blocks
        lay = self._layout(plan.tokens, plan.rows, plan.width, plan.samples, plan.pending)
        self.np_i[: lay["tables"].start] = plan.head
        self._gather_tables(lay, plan.rows, plan.width, plan.table_rows)
        self.np_i[lay["tables"].stop : lay["pending"].stop] = plan.tail
        self.np_f[: len(plan.floats)] = plan.floats

    def _gather_tables(self, lay: dict[str, slice], rows: int, width: int, table_rows: np.ndarray) -> np.ndarray:
        table = self.np_i[lay["tables"]].reshape(rows, width)
        table[: len(table_rows)] = self.tables[table_rows, :width]
        table[len(table_rows) :] = 0
        return table

    def load(self, plan: StepPlan, backend, previous_tokens: torch.Tensor | None = None) -> ModelInputs:
        """The device tensors of `plan` (one copy of the host buffers); `previous_tokens`: the sampled
        tokens [S] of the step in flight, for the pending rows."""
        lay = self._layout(plan.tokens, plan.rows, plan.width, plan.samples, plan.pending)
        self._copy(lay["pending"].stop, len(plan.floats))
        d = self.dev_i
        if plan.pending:  # the in-flight step's sampled tokens become these rows' input ids
            dst, src = d[lay["pending"]].view(2, -1)
            d[lay["input_ids"]].index_copy_(0, dst, previous_tokens.index_select(0, src))
        rows, num_seqs = plan.rows, plan.num_seqs
        meta = AttentionMetadata(
            is_prefill=plan.is_prefill, slot_mapping=d[lay["slots"]],
            block_tables=d[lay["tables"]].view(rows, plan.width), context_lens=d[lay["context"]],
            query_lens=plan.query_lens + [1] * (rows - num_seqs), cached_lens=plan.cached_lens + [0] * (rows - num_seqs),
            block_size=self.block_size, backend=backend,
        )
        backend.prepare(meta)
        return ModelInputs(d[lay["input_ids"]], d[lay["positions"]], meta,
                           d[lay["logits"]] if plan.has_logits_rows else None, plan.num_samples,
                           self._sampling_tensors(plan, lay))

    def _sampling(self, seqs: list[Sequence], records: list[_Record], lay: dict[str, slice]) -> int:
        """Writes the sampling rows (keys, top_k; temperatures, top_p, min_p); returns floats written."""
        count = len(seqs)
        if not count:
            return 0
        settings = np.array([r.sampling for r in records], dtype=np.float64)  # [S, 5]
        hashes = np.fromiter((r.seed_hash for r in records), np.uint64, count)
        positions = np.fromiter((s.num_output_tokens + s.num_pending for s in seqs), np.int64, count)
        self.np_i[lay["keys"]] = noise_keys_array(hashes, positions).reshape(-1)
        self.np_i[lay["top_k"]] = settings[:, 1]
        self.np_f[:count] = settings[:, 0]
        self.np_f[count : 2 * count] = settings[:, 2]
        self.np_f[2 * count : 3 * count] = settings[:, 3]
        return 3 * count

    def _sampling_tensors(self, plan: StepPlan, lay: dict[str, slice]) -> SamplingTensors | None:
        count = plan.num_samples
        if not count:
            return None
        f = self.dev_f
        return SamplingTensors(
            temperatures=f[:count], top_k=self.dev_i[lay["top_k"]], top_p=f[count : 2 * count],
            min_p=f[2 * count : 3 * count], keys=self.dev_i[lay["keys"]].view(count, 2),
            all_greedy=plan.all_greedy, needs_filter=plan.needs_filter,
        )

    # ---- per-sequence records ---------------------------------------------------------------
    def _records(self, seqs: list[Sequence]) -> list[_Record]:
        out = []
        for seq in seqs:
            rec = self.records.get(seq)
            if rec is None:
                rec = self._new_record(seq, seqs)
            table = seq.block_table
            if rec.table is not table:  # a new table (first use, or after preemption)
                rec.table, rec.synced = table, 0
            if rec.synced < len(table):
                blocks = table[rec.synced :]
                self.tables[rec.row, rec.synced : len(table)] = blocks
                self.table_writes.append((rec.row, rec.synced, blocks))
                rec.synced = len(table)
            out.append(rec)
        return out

    def _new_record(self, seq: Sequence, batch: list[Sequence]) -> _Record:
        if not self.free_rows:  # drop the records of sequences that are not in this batch
            keep = set(map(id, batch))
            for other in [s for s in self.records if id(s) not in keep]:
                self.free_rows.append(self.records.pop(other).row)
        rec = _Record(seq.block_table, 0, self.free_rows.pop(), self._settings(seq), seed_hash(seq.seed))
        self.records[seq] = rec
        return rec

    def _settings(self, seq: Sequence) -> tuple:
        p, vocab = seq.params, self.vocab_size
        temperature = 0.0 if p.greedy else p.temperature
        top_k = p.top_k if 0 < p.top_k < vocab else vocab
        filtered = not p.greedy and (top_k < vocab or p.top_p < 1 or p.min_p > 0)
        return (temperature, float(top_k), p.top_p, p.min_p, float(filtered))

    # ---- transfer ---------------------------------------------------------------------------
    def _copy(self, num_ints: int, num_floats: int) -> None:
        if self.copied is None:
            return
        self.dev_i[:num_ints].copy_(self.host_i[:num_ints], non_blocking=True)
        if num_floats:
            self.dev_f[:num_floats].copy_(self.host_f[:num_floats], non_blocking=True)
        self.copied.record()

    def _wait(self) -> None:
        """The host buffers are about to be rewritten: the previous step's copy must have been read."""
        if self.copied is not None:
            self.copied.synchronize()


def _fill(dst: np.ndarray, values, pad: int) -> None:
    n = len(values)
    dst[:n] = values
    dst[n:] = pad
