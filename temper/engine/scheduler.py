"""Decides which sequences run in each engine step.

A step is either a prefill step (waiting sequences are admitted and their uncached tokens computed,
up to `max_num_batched_tokens` tokens; the last admitted prompt may be split across steps: chunked
prefill) or a decode step (one token for every running sequence). Prefill has priority, as in
nano-vllm and vLLM v0.

Preemption by recompute: when a decode step needs a KV block and none is free, the youngest running
sequence is freed and put back at the head of the waiting queue. It keeps its generated tokens; on
re-admission they are recomputed as part of its prompt (often from the prefix cache, since its freed
blocks keep their hashes), so the result equals an unpreempted run.

A step is `launched` (its tokens' K/V are being computed, its sampling sequences each owe one token)
and later `resolve`d with the sampled tokens; `postprocess` does both. With overlapped scheduling the
engine schedules and launches step k+1 before it resolves step k: a sequence then runs with its
pending token (`Sequence.num_pending`), whose id only the device knows yet. A sequence whose pending
token certainly ends it (max_new_tokens, max_model_len) is not scheduled again; one that a stop token
ends was scheduled once more in vain, and that step's token for it is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from temper.engine.block_manager import BlockManager
from temper.engine.sequence import Sequence, SequenceStatus
from temper.engine.stop_checker import StopChecker


@dataclass
class ScheduledBatch:
    """The work of one step.

    seqs: the sequences that run. num_new_tokens[i]: tokens of seqs[i] computed in this step, from
    position seqs[i].num_computed_tokens on (1 for decode). sample[i]: whether seqs[i] samples a
    token, i.e. this step computes up to its last token (a prefill chunk that stops earlier does not).
    """

    seqs: list[Sequence]
    num_new_tokens: list[int]
    is_prefill: bool
    sample: list[bool]

    @classmethod
    def of(cls, seqs: list[Sequence], num_new_tokens: list[int], is_prefill: bool) -> ScheduledBatch:
        sample = [s.num_computed_tokens + n == len(s) + s.num_pending for s, n in zip(seqs, num_new_tokens)]
        return cls(seqs, num_new_tokens, is_prefill, sample)


@dataclass
class SchedulerStats:
    prefill_tokens_computed: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    finished_requests: int = 0  # sequences that finished by a stop condition (not aborted ones)
    num_preemptions: int = 0
    prefill_steps: int = 0
    decode_steps: int = 0


class Scheduler:
    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int, block_manager: BlockManager,
                 stop_checker: StopChecker):
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.block_manager = block_manager
        self.stop_checker = stop_checker
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # oldest first
        self.finished_early: list[Sequence] = []  # aborted or finished before running; reported next step
        self.unfinished: dict[str, Sequence] = {}  # request id -> waiting or running sequence
        self.stats = SchedulerStats()
        self.on_finish: Callable[[Sequence], None] | None = None  # called before a finished seq's blocks go
        self.on_preempt: Callable[[Sequence], None] | None = None  # called before a preempted seq's blocks go

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self.unfinished[seq.request_id] = seq

    def add_finished(self, seq: Sequence) -> None:
        self.finished_early.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.finished_early)

    def num_unfinished(self) -> int:
        return len(self.unfinished)

    def abort(self, request_id: str) -> None:
        """Free the request now; the next step reports it finished with reason "abort"."""
        seq = self.unfinished.pop(request_id, None)
        if seq is None:
            return
        (self.running if seq.status is SequenceStatus.RUNNING else self.waiting).remove(seq)
        self.stop_checker.finish(seq, "abort")
        self._free_finished(seq)
        self.finished_early.append(seq)

    def pop_finished_early(self) -> list[Sequence]:
        seqs, self.finished_early = self.finished_early, []
        return seqs

    # ---- scheduling -------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        batch = self._schedule_prefill()
        if batch is None and self.running:
            batch = self._schedule_decode()
        return batch

    def _schedule_prefill(self) -> ScheduledBatch | None:
        seqs, counts = [], []
        budget = self.max_num_batched_tokens
        # A partially prefilled sequence is always waiting[0]: decode (the only place that preempts
        # and pushes to the head) never runs while one exists, since it can always continue.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.num_pending:  # preempted with a token in flight: admit once it is known
                break
            if not seq.block_table and not self._admit(seq):
                break
            n = min(len(seq) - seq.num_computed_tokens, budget)
            self.block_manager.commit(seq, seq.num_computed_tokens + n)
            seqs.append(seq)
            counts.append(n)
            budget -= n
            if seq.num_computed_tokens + n < len(seq):
                break  # chunked: the rest of this prompt goes in the next step
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
        return ScheduledBatch.of(seqs, counts, is_prefill=True) if seqs else None

    def _admit(self, seq: Sequence) -> bool:
        if not self.block_manager.can_allocate(seq):
            return False
        cached = self.block_manager.allocate(seq)
        seq.num_computed_tokens = cached
        if seq.cached_tokens is None:
            seq.cached_tokens = cached
        self.stats.cached_tokens += cached
        return True

    def _schedule_decode(self) -> ScheduledBatch | None:
        scheduled, kept = [], []  # kept: scheduled, plus those whose in-flight token ends them
        manager = self.block_manager
        block_size = manager.block_size
        while self.running:
            seq = self.running.pop(0)
            if seq.num_pending and self._ends_with_pending_token(seq):
                kept.append(seq)
                continue
            total = len(seq) + seq.num_pending  # tokens that need a slot after this step
            if total <= len(seq.block_table) * block_size and (
                not manager.enable_prefix_caching or seq.num_hashed_blocks >= len(seq) // block_size
            ):
                scheduled.append(seq)  # room in its blocks and nothing to register: grow and commit are no-ops
                kept.append(seq)
                continue
            while not manager.can_grow(seq, total):
                victim = self.running.pop() if self.running else seq
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                manager.grow(seq, total)
                manager.commit(seq, len(seq))  # only blocks of known tokens
                scheduled.append(seq)
                kept.append(seq)
        self.running = kept
        # Longest context first: a decode attention kernel starts its programs in row order, so the
        # longest ones start first and the step does not wait on a long one started last.
        scheduled.sort(key=len, reverse=True)
        return ScheduledBatch.of(scheduled, [1] * len(scheduled), is_prefill=False) if scheduled else None

    def _ends_with_pending_token(self, seq: Sequence) -> bool:
        outputs, length = seq.num_output_tokens + seq.num_pending, len(seq) + seq.num_pending
        limit = seq.params.max_new_tokens
        return (limit is not None and outputs >= limit) or length >= self.stop_checker.max_model_len

    def _preempt(self, seq: Sequence) -> None:
        if self.on_preempt is not None:
            self.on_preempt(seq)
        self.block_manager.free_seq(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.appendleft(seq)

    # ---- after the forward pass ----------------------------------------------------------------
    def postprocess(self, batch: ScheduledBatch, token_ids: list[int], logprobs: list[float],
                    text: bool = True) -> list[Sequence]:
        """`launched` then `resolve`: the step ran and these are its tokens."""
        self.launched(batch)
        return self.resolve(batch, token_ids, logprobs, text)

    def launched(self, batch: ScheduledBatch) -> None:
        """The step's K/V are being computed; each sampling sequence owes one token."""
        for seq, n, sample in zip(batch.seqs, batch.num_new_tokens, batch.sample):
            seq.num_computed_tokens += n
            seq.num_pending += sample
        if batch.is_prefill:
            self.stats.prefill_tokens_computed += sum(batch.num_new_tokens)
            self.stats.prefill_steps += 1
        else:
            self.stats.decode_steps += 1

    def resolve(self, batch: ScheduledBatch, token_ids: list[int], logprobs: list[float],
                text: bool = True) -> list[Sequence]:
        """Append a launched step's sampled tokens, apply stop conditions, free finished sequences.

        token_ids/logprobs hold one entry per sampling sequence of `batch`, in batch order. A sequence
        that finished (or was aborted) since the launch drops its token. Returns the sequences that
        got a token. text=False: detokenize only where stop strings need it (see
        `StopChecker.check_many`).
        """
        sampled = [seq for seq, sample in zip(batch.seqs, batch.sample) if sample]
        live = []
        for seq, token_id, logprob in zip(sampled, token_ids, logprobs, strict=True):
            seq.num_pending -= 1
            if not seq.finished:
                seq.append_token(token_id, logprob)
                live.append(seq)
        waiting = [seq for seq in live if seq.status is SequenceStatus.WAITING]  # preempted meanwhile
        self.stop_checker.check_many(live, text)
        for seq in live:
            if seq.finished:
                self._free_finished(seq)
                del self.unfinished[seq.request_id]
                self.stats.finished_requests += 1
        for seq in waiting:
            if seq.finished:
                self.waiting.remove(seq)
        self.stats.generated_tokens += len(live)
        self.running = [seq for seq in self.running if not seq.finished]
        return live

    def _free_finished(self, seq: Sequence) -> None:
        if self.on_finish is not None:
            self.on_finish(seq)
        self.block_manager.free_seq(seq)
