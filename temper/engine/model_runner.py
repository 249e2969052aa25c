"""The only part of the engine that touches tensors and devices.

Builds the model on the device, loads its weights, owns the KV cache, turns a `ScheduledBatch` into
batch tensors (once per step), runs the forward pass, computes logits only at the last position of
each sequence that samples, and calls the sampler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from temper.engine.attention import AttentionMetadata, TorchPagedAttention
from temper.engine.engine_args import EngineArgs
from temper.engine.models import model_class
from temper.engine.models.decoder import head_dim_of
from temper.engine.sampler import Sampler, SamplingTensors, noise_keys
from temper.engine.sampling_params import SamplingParams
from temper.engine.scheduler import ScheduledBatch
from temper.engine.sequence import Sequence
from temper.engine.weights import WeightMap, iter_safetensors

CPU_KV_TOKENS_PER_SEQ = 512
CPU_KV_MAX_BYTES = 4 << 30


@dataclass
class ModelInputs:
    """input_ids, positions: [T] int64. logits_indices: [S] rows of the hidden states to sample from."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_indices: torch.Tensor
    sample_seqs: list[Sequence]


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class ModelRunner:
    def __init__(self, args: EngineArgs, hf_config, max_model_len: int):
        self.args = args
        self.device = args.torch_device()
        self.dtype = args.torch_dtype(self.device)
        self.block_size = args.block_size
        self.max_model_len = max_model_len
        self.vocab_size = hf_config.vocab_size
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        with torch.device(self.device), _default_dtype(self.dtype):
            self.model = model_class(hf_config)(hf_config, max_model_len).eval()
        self.weight_map = WeightMap(self.model)
        self._load_all(iter_safetensors(args.model), args.model)
        self.attention_backend = TorchPagedAttention()
        self.sampler = Sampler()
        self.kv_shape = (hf_config.num_hidden_layers, hf_config.num_key_value_heads, head_dim_of(hf_config))
        self.num_heads = hf_config.num_attention_heads
        self.num_kv_blocks = args.num_kv_blocks or self._auto_num_kv_blocks()
        if self.num_kv_blocks < self.min_kv_blocks():
            raise ValueError(
                f"EngineArgs.num_kv_blocks={self.num_kv_blocks} cannot hold one sequence of max_model_len="
                f"{max_model_len} tokens; use at least {self.min_kv_blocks()} blocks or a smaller max_model_len"
            )
        self.kv_cache: torch.Tensor | None = None
        self.weights_on_device = True
        self.allocate_kv_cache()

    def _ints(self, data) -> torch.Tensor:
        return torch.tensor(data, dtype=torch.int64, device=self.device)

    def _floats(self, data) -> torch.Tensor:
        return torch.tensor(data, dtype=torch.float32, device=self.device)

    # ---- weights ----------------------------------------------------------------------------
    def _load_all(self, named_tensors: Iterable[tuple[str, torch.Tensor]], source: str) -> None:
        loaded = self.weight_map.load(named_tensors)
        missing = [n for n in self.weight_map.hf_names() if n not in loaded]
        if missing:
            raise ValueError(f"checkpoint {source} lacks {len(missing)} weight(s) the model needs, e.g. {missing[:5]}")

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.weight_map.load(named_tensors)

    def get_weight(self, hf_name: str) -> torch.Tensor:
        return self.weight_map.get(hf_name)

    def offload_weights(self) -> None:
        """Move the weights to CPU (no-op on CPU) to free device memory."""
        if self.device.type == "cuda" and self.weights_on_device:
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self.weights_on_device = False

    def reload_weights(self) -> None:
        if self.device.type == "cuda" and not self.weights_on_device:
            self.model.to(self.device)
        self.weights_on_device = True

    # ---- KV cache ---------------------------------------------------------------------------
    def block_bytes(self) -> int:
        num_layers, num_kv_heads, head_dim = self.kv_shape
        return 2 * num_layers * self.block_size * num_kv_heads * head_dim * self.dtype.itemsize

    def min_kv_blocks(self) -> int:
        return -(-self.max_model_len // self.block_size)

    def _auto_num_kv_blocks(self) -> int:
        if self.device.type == "cpu":
            wanted = -(-self.args.max_num_seqs * CPU_KV_TOKENS_PER_SEQ // self.block_size)
            return max(self.min_kv_blocks(), min(wanted, CPU_KV_MAX_BYTES // self.block_bytes()))
        free, total = torch.cuda.mem_get_info(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._warmup()
        stats = torch.cuda.memory_stats(self.device)
        activations = stats["allocated_bytes.all.peak"] - stats["allocated_bytes.all.current"]
        # The warm-up has no KV cache, so it cannot measure attention's gathers; reserve their bound.
        _num_layers, num_kv_heads, head_dim = self.kv_shape
        workspace = self.attention_backend.workspace_bytes(self.num_heads, num_kv_heads, head_dim, self.dtype.itemsize)
        budget = total * self.args.mem_fraction_static - (total - free) - activations - workspace
        blocks = int(budget // self.block_bytes())
        if blocks < self.min_kv_blocks():
            raise ValueError(
                f"GPU memory left for the KV cache ({max(budget, 0) / 2**30:.2f} GiB) holds {blocks} blocks, fewer "
                f"than one sequence of max_model_len={self.max_model_len} needs ({self.min_kv_blocks()}); raise "
                "mem_fraction_static or lower max_model_len / max_num_batched_tokens"
            )
        return blocks

    def _warmup(self) -> None:
        """A prefill of max_num_batched_tokens tokens with sampling, to measure peak activation memory.

        Runs before the KV cache exists: attention then skips the cache write (see `attention.py`).
        """
        num_tokens = min(self.args.max_num_batched_tokens, self.args.max_num_seqs * self.max_model_len)
        num_seqs = min(self.args.max_num_seqs, num_tokens)
        seqs = [Sequence(f"warmup-{i}", [0] * (num_tokens // num_seqs), SamplingParams(top_p=0.9), seed=i)
                for i in range(num_seqs)]
        for seq in seqs:
            seq.block_table = [0] * -(-len(seq) // self.block_size)
        self.run(ScheduledBatch.of(seqs, [len(seq) for seq in seqs], is_prefill=True))
        torch.cuda.synchronize(self.device)

    def allocate_kv_cache(self) -> None:
        num_layers, num_kv_heads, head_dim = self.kv_shape
        # Zeros, not empty: padded decode slots are masked, but NaN garbage would still leak through.
        self.kv_cache = torch.zeros(2, num_layers, self.num_kv_blocks, self.block_size, num_kv_heads, head_dim,
                                    dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.model.model.layers):
            layer.self_attn.attn.k_cache, layer.self_attn.attn.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]

    def free_kv_cache(self) -> None:
        for layer in self.model.model.layers:
            layer.self_attn.attn.k_cache = layer.self_attn.attn.v_cache = None
        self.kv_cache = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- one step ---------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[list[int], list[float]]:
        """Run `batch`; returns (token id, log-prob) for each sampling sequence, in batch order."""
        inputs = self._prepare(batch)
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
        if not inputs.sample_seqs:
            return [], []
        logits = self.model.compute_logits(hidden[inputs.logits_indices])
        tokens, logprobs = self.sampler(logits, self._sampling_tensors(inputs.sample_seqs))
        return tokens.tolist(), logprobs.tolist()

    def _prepare(self, batch: ScheduledBatch) -> ModelInputs:
        input_ids: list[int] = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            input_ids.extend(seq.token_ids[seq.num_computed_tokens : seq.num_computed_tokens + n])
        cached_lens = [seq.num_computed_tokens for seq in batch.seqs]
        max_blocks = max(len(seq.block_table) for seq in batch.seqs)
        block_tables = self._ints([seq.block_table + [0] * (max_blocks - len(seq.block_table)) for seq in batch.seqs])
        query_lens_t, cached_t = self._ints(batch.num_new_tokens), self._ints(cached_lens)
        # Per-token positions and cache slots, derived on the device from per-sequence data.
        seq_index = torch.repeat_interleave(torch.arange(len(batch.seqs), device=self.device), query_lens_t,
                                            output_size=len(input_ids))
        starts = torch.cumsum(query_lens_t, 0) - query_lens_t
        positions = cached_t[seq_index] + torch.arange(len(input_ids), device=self.device) - starts[seq_index]
        slots = block_tables[seq_index, positions // self.block_size] * self.block_size + positions % self.block_size
        meta = AttentionMetadata(
            is_prefill=batch.is_prefill, slot_mapping=slots, block_tables=block_tables,
            context_lens=cached_t + query_lens_t, query_lens=list(batch.num_new_tokens), cached_lens=cached_lens,
            block_size=self.block_size, backend=self.attention_backend,
        )
        meta.backend.prepare(meta)
        sampling = [i for i, sample in enumerate(batch.sample) if sample]
        logits_indices = (starts + query_lens_t - 1)[self._ints(sampling)]
        return ModelInputs(self._ints(input_ids), positions, meta, logits_indices, [batch.seqs[i] for i in sampling])

    def _sampling_tensors(self, seqs: list[Sequence]) -> SamplingTensors:
        params = [seq.params for seq in seqs]
        temperatures = [0.0 if p.greedy else p.temperature for p in params]
        top_k = [p.top_k if 0 < p.top_k < self.vocab_size else self.vocab_size for p in params]
        filtered = any(
            not p.greedy and (k < self.vocab_size or p.top_p < 1 or p.min_p > 0) for p, k in zip(params, top_k)
        )
        return SamplingTensors(
            temperatures=self._floats(temperatures),
            top_k=self._ints(top_k),
            top_p=self._floats([p.top_p for p in params]),
            min_p=self._floats([p.min_p for p in params]),
            keys=self._ints([noise_keys(s.seed, s.num_output_tokens) for s in seqs]),
            all_greedy=all(t == 0 for t in temperatures),
            needs_filter=filtered,
        )
