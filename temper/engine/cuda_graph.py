"""`DecodeGraphs`: the decode forward pass (embedding to logits) replayed from CUDA graphs.

A decode step of a small model launches a few hundred short kernels; as one CUDA graph they cost one
launch. Graphs are captured per bucket of batch sizes (`graph_buckets`): a batch runs in the smallest
bucket that holds it, its extra rows padded (see `step_inputs.py`). Each graph reads its inputs from
fixed views of the runner's device input buffer and writes logits into one shared static buffer.

A graph bakes in the addresses of everything it touches: weights, rotary tables, the KV cache, the
input buffer. Weight updates copy in place (`WeightMap.load`), so graphs stay valid across them; moving
the weights (`offload_weights` / `reload_weights`) or reallocating the KV cache invalidates them, and
the runner then calls `reset()`; the next decode step captures again. Capture needs the Triton
attention backend (the reference backend sizes its gathers on the host, per step) and, for an MoE model,
the grouped experts (kernel group "moe"; the reference loop reads each expert's token count on the host).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from temper.engine.attention import AttentionMetadata

logger = logging.getLogger(__name__)


def graph_buckets(max_batch: int) -> list[int]:
    """Batch sizes with a graph: 1, 2, 4, 8, every 16 up to 256, every 64 beyond, and max_batch."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, min(max_batch, 257), 16))
    sizes += list(range(320, max_batch, 64)) + [max_batch]
    return sorted({s for s in sizes if s <= max_batch})


class DecodeGraphs:
    def __init__(self, runner, max_batch: int):
        self.runner = runner
        self.buckets = graph_buckets(max_batch)
        self.graphs: dict[int, Callable[[], None]] = {}  # bucket -> replay of its captured graph
        self.logits: torch.Tensor | None = None
        self.pool = None

    @property
    def captured(self) -> bool:
        return bool(self.graphs)

    def bucket(self, batch_size: int) -> int:
        return next(b for b in self.buckets if b >= batch_size)

    def reset(self) -> None:
        """Forget every graph (their memory returns to the caching allocator)."""
        self.graphs.clear()
        self.logits = None
        self.pool = None

    def capture(self) -> None:
        """Capture every bucket, largest first (smaller graphs reuse its memory pool)."""
        runner = self.runner
        model = runner.model
        self.logits = torch.empty((self.buckets[-1], runner.vocab_size), dtype=runner.dtype, device=runner.device)
        for rows in reversed(self.buckets):
            ids, positions, slots, context, tables = runner.inputs.decode_views(rows)
            meta = AttentionMetadata(
                is_prefill=False, slot_mapping=slots, block_tables=tables, context_lens=context,
                query_lens=[1] * rows, cached_lens=[0] * rows, block_size=runner.block_size,
                backend=runner.attention_backend,
            )
            meta.backend.prepare(meta)

            def forward(rows=rows, ids=ids, positions=positions, meta=meta):
                hidden = model(ids, positions, meta)
                model.compute_logits(hidden, out=self.logits[:rows])

            forward()  # compiles the kernels for exactly these arguments, outside the capture
            self.graphs[rows] = self._capture_one(forward)
        logger.info("captured decode CUDA graphs for batch sizes %s", self.buckets)

    def _capture_one(self, forward: Callable[[], None]) -> Callable[[], None]:
        """`forward` captured into a CUDA graph (all graphs share one memory pool); returns its replay."""
        device = self.runner.device
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(device)  # capture may not run on the legacy default stream
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            graph.capture_begin(pool=self.pool)
            try:
                forward()
            finally:
                graph.capture_end()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        return graph.replay

    def replay(self, rows: int, batch_size: int) -> torch.Tensor:
        """Run bucket `rows` on the inputs the runner just copied; logits [batch_size, V] (a view)."""
        self.graphs[rows]()
        return self.logits[:batch_size]
