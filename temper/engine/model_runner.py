"""The only part of the engine that touches tensors and devices.

Builds the model on the device, loads its weights, owns the KV cache, turns a `ScheduledBatch` into
batch tensors (`StepInputs`: numpy on the host, one asynchronous copy), runs the forward pass,
computes logits only at the last position of each sequence that samples, and calls the sampler.

On CUDA the fast path is chosen at start (`kernels.self_check.enable`): Triton kernels for the layer ops, the
paged attention (`kernels.paged_attention`, or for a latent-attention model such as DeepSeek-V3 its
prefill and decode kernels `kernels.latent_attention`) and the sampler, grouped GEMMs for an MoE model's
experts, each group kept only if it passes a self-check against the PyTorch reference, and decode steps
replayed from CUDA graphs (`cuda_graph.py`). On CPU, or with ``EngineArgs.kernels="torch"``, everything runs
the PyTorch reference. The only host synchronisation per step is reading the sampled tokens and log-probs.

Tensor parallelism (``EngineArgs.tensor_parallel_size`` N > 1): the engine's runner is rank 0; it
starts ranks 1..N-1 as worker processes (`tp_worker.TPWorkers`), each a `ModelRunner` of its own
shard. Every operation of rank 0 that touches the model or the group's collectives is mirrored on
the workers, in the same order (`_mirrored`): launching a step (the workers get its `StepPlan`, and
each keeps the sampled tokens of its own last step for the next one's pending inputs), capturing
the CUDA graphs, loading and reading weights, moving weights and the KV cache. Construction is
symmetric: each rank loads its shard from the checkpoint, and the kernel choice and the KV-cache size
(the minimum over the ranks) are agreed through the group. Every rank samples from the same gathered
logits with the same per-request seeds, so all ranks draw the same tokens; rank 0's are reported.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from temper.engine import kernels
from temper.engine.attention import TorchPagedAttention
from temper.engine.cuda_graph import DecodeGraphs
from temper.engine.dummy_weights import init_dummy_weights
from temper.engine.engine_args import EngineArgs
from temper.engine.kernels import self_check
from temper.engine.models import model_class
from temper.engine.models.moe import GroupedExperts
from temper.engine.routed_experts import RoutedExpertsCache
from temper.engine.sampler import Sampler
from temper.engine.sampling_params import SamplingParams
from temper.engine.scheduler import ScheduledBatch
from temper.engine.sequence import Sequence
from temper.engine.step_inputs import StepInputs, StepPlan
from temper.engine.tp_group import TPGroup
from temper.engine.weights import WeightMap, iter_safetensors

logger = logging.getLogger(__name__)


@dataclass
class LaunchedStep:
    """A step whose forward pass and sampling are queued on the device.

    tokens/logprobs: [S] device tensors of the sampling sequences (None if none samples); rows: each
    sampling sequence's index in them. `result()` waits for the one device-to-host copy (watching the
    tensor-parallel workers meanwhile, see `TPGroup.wait`).
    """

    batch: ScheduledBatch
    tokens: torch.Tensor | None
    rows: dict[Sequence, int]
    host: torch.Tensor | None
    copied: torch.cuda.Event | None
    tp: TPGroup | None = None

    def result(self) -> tuple[list[int], list[float]]:
        if self.host is None:
            return [], []
        if self.copied is not None:
            self.tp.wait(self.copied)
        tokens, logprobs = self.host.tolist()
        return [int(t) for t in tokens], logprobs


CPU_KV_TOKENS_PER_SEQ = 512
CPU_KV_MAX_BYTES = 4 << 30
GRAPH_RESERVE_BYTES = 256 << 20  # graph-private activations besides the logits buffer


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class ModelRunner:
    """One rank of the engine's model (the only one without tensor parallelism).

    `workers`: on the engine's own runner (rank 0) when ``args.tensor_parallel_size`` > 1, the
    `tp_worker.TPWorkers` the engine started (this rank joins their group, and drives them); `group`: on a
    worker, the `TPGroup` it joined. Neither: one rank.
    """

    def __init__(self, args: EngineArgs, hf_config, max_model_len: int, group: TPGroup | None = None,
                 workers=None):
        if workers is not None:
            group = workers.group
        self.workers = None  # set once every rank is built: construction is symmetric, never mirrored
        self.tp = group or TPGroup(args.torch_device())
        try:
            self._build(args, hf_config, max_model_len)
        except (ValueError, OSError):  # a bad checkpoint or setting: every rank fails alike
            if workers is not None:
                workers.close()
            raise
        except BaseException as e:
            if workers is None:
                raise
            error = workers.broken(e)
            workers.close()
            raise error from e
        self.workers = workers

    def _build(self, args: EngineArgs, hf_config, max_model_len: int) -> None:
        self.args = args
        self.device = self.tp.device
        self.dtype = args.torch_dtype(self.device)
        self.block_size = args.block_size
        self.max_model_len = max_model_len
        self.vocab_size = hf_config.vocab_size
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        hf_config.temper_moe_router_dtype = args.moe_router_dtype  # read by the MoE blocks (moe.SparseMoeBlock)
        with torch.device(self.device), _default_dtype(self.dtype):
            self.model = model_class(hf_config)(hf_config, max_model_len, self.tp).eval()
        self.weight_map = WeightMap(self.model)
        self.routed_experts = RoutedExpertsCache.for_model(self.model)  # None without experts
        self.model.routed_experts = self.routed_experts
        if args.load_format == "dummy":
            init_dummy_weights(self.model, hf_config, args.seed)
        else:
            self._load_all(iter_safetensors(args.model), args.model)
        tp = self.tp.size
        # K and V per layer, or one latent that is both (DeepSeek's MLA): the model class says which.
        self.kv_tensors, kv_heads, kv_dim = self.model.kv_cache_layout(hf_config, tp)
        self.kv_shape = (hf_config.num_hidden_layers, kv_heads, kv_dim)
        self.num_heads = hf_config.num_attention_heads // tp
        self._enable_symmetric_memory(hf_config)
        self.kernel_groups = self._enable_kernels(hf_config)
        self.reference_backend = TorchPagedAttention()
        self.attention_backend = self._attention_backend()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # the self-check's and tuning's buffers: free memory sizes the KV cache
        self.sampler = Sampler()
        self.inputs = StepInputs(self.device, self.block_size, max_model_len, args.max_num_seqs,
                                 args.max_num_batched_tokens, self.vocab_size)
        self.graphs = DecodeGraphs(self, args.max_num_seqs) if self._capturable() else None
        self.kv_cache: torch.Tensor | None = None
        self.weights_on_device = True
        self.num_kv_blocks = self.tp.agree_min("num_kv_blocks", [args.num_kv_blocks or self._auto_num_kv_blocks()])[0]
        if self.num_kv_blocks < self.min_kv_blocks():
            raise ValueError(
                f"EngineArgs.num_kv_blocks={self.num_kv_blocks} cannot hold one sequence of max_model_len="
                f"{max_model_len} tokens; use at least {self.min_kv_blocks()} blocks or a smaller max_model_len"
            )
        self._allocate_kv_cache()
        if self.tp.rank == 0:
            logger.info("engine kernels: %s; decode CUDA graphs: %s; tensor parallel: %d",
                        sorted(self.kernel_groups) or "PyTorch reference", "on" if self.graphs else "off", tp)

    def _enable_symmetric_memory(self, hf_config) -> None:
        """The all-reduces of the layers' outputs (at most a prefill step's rows) through symmetric memory
        (`EngineArgs.symmetric_memory`): before the KV cache is sized, which then leaves room for it."""
        wanted = self.args.symmetric_memory
        if self.tp.size == 1 or self.device.type != "cuda" or wanted is False:
            return
        rows = max(self.args.max_num_batched_tokens, self.args.max_num_seqs)
        reason = self.tp.enable_symmetric_memory(self.dtype, rows * hf_config.hidden_size)
        if reason is not None and wanted:
            raise ValueError(f"EngineArgs.symmetric_memory=True but it cannot be used here: {reason}; leave it None "
                             "(NCCL where it is unusable) or set it False")
        if reason is not None and self.tp.rank == 0:
            logger.warning("tensor parallel: all-reduces through NCCL (symmetric memory unusable: %s)", reason)

    def _enable_kernels(self, hf_config) -> set[str]:
        """The kernel groups that pass on this rank, narrowed to those that pass on every rank."""
        without = ("fused_moe",) if self.args.moe_kernel == "grouped_mm" else ()
        groups = self_check.enable(self.args.kernels, self.device, self.dtype, self._shape(hf_config), without)
        agreed = self.tp.agree_min("kernels", [int(g in groups) for g in kernels.GROUPS])
        groups = {g for g, ok in zip(kernels.GROUPS, agreed) if ok}
        kernels.set_enabled(groups)
        return groups

    def _capturable(self) -> bool:
        """Whether decode steps run from CUDA graphs: on CUDA, with the Triton attention backend and the
        kernel groups the model names (`CUDA_GRAPH_KERNELS`, one of each entry's: an MoE model's reference
        dispatch reads expert counts on the host); otherwise decode runs eagerly."""
        return (self.device.type == "cuda" and self.args.cuda_graphs
                and self.attention_backend is not self.reference_backend
                and all(set(options) & self.kernel_groups for options in self.model.CUDA_GRAPH_KERNELS))

    def _shape(self, hf_config) -> SimpleNamespace:
        _num_layers, num_kv_heads, head_dim = self.kv_shape
        experts = next((m for m in self.model.modules() if isinstance(m, GroupedExperts)), None)
        return SimpleNamespace(num_heads=self.num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                               hidden_size=hf_config.hidden_size,
                               intermediate_size=hf_config.intermediate_size // self.tp.size,
                               block_size=self.block_size, vocab_size=self.vocab_size,
                               qk_norm=getattr(self.model.model.layers[0].self_attn, "qk_norm", False),
                               latent_value_dim=self._latent_value_dim(),
                               experts=None if experts is None else (experts.num_experts, experts.hidden_size,
                                                                     experts.local_size, experts.top_k))

    def _latent_value_dim(self) -> int | None:
        """The value width of a latent-attention model's cache entry (its first kv_lora_rank columns: the
        model class says ``ATTENTION_KERNEL = "latent"``), None for K/V attention."""
        if getattr(self.model, "ATTENTION_KERNEL", "paged") != "latent":
            return None
        return self.model.model.layers[0].self_attn.rank

    def _attention_backend(self):
        """The Triton backend when kernel group "attention" passed its self-check (for a latent model, the
        latent prefill and decode kernels'), else the reference."""
        if "attention" not in self.kernel_groups:
            return self.reference_backend
        _num_layers, num_kv_heads, head_dim = self.kv_shape
        value_dim = self._latent_value_dim()
        if value_dim is not None:
            from temper.engine.kernels.latent_attention import TritonLatentAttention

            return TritonLatentAttention.for_device(self.num_heads, head_dim, value_dim, self.block_size, self.dtype,
                                                    self.device, self.args.max_num_seqs, self.max_model_len)
        from temper.engine.kernels.paged_attention import TritonPagedAttention

        return TritonPagedAttention.for_device(self.num_heads, num_kv_heads, head_dim, self.block_size,
                                               self.dtype, self.device, self.args.max_num_seqs, self.max_model_len)

    # ---- tensor-parallel mirroring ----------------------------------------------------------
    @contextlib.contextmanager
    def _mirrored(self, method: str, *args, reply: bool = False):
        """Run the body here while the workers run ``ModelRunner.<method>(*args)`` (see
        `tp_worker.Command`); `reply`: wait for every worker to finish it. A ValueError or OSError of
        the body (a bad request: every rank fails alike) is raised as is; any other error leaves the
        ranks out of step and stops the engine (`TPWorkers.broken`)."""
        workers = self.workers
        if workers is None:
            yield
            return
        workers.send(method, args, reply)
        try:
            yield
        except (ValueError, OSError):
            if reply:
                workers.wait_replies(quiet=True)
            raise
        except BaseException as e:
            raise workers.broken(e) from e
        if reply:
            workers.wait_replies()

    def close(self) -> None:
        """Stop the tensor-parallel workers (no-op without); the runner is unusable afterwards. The
        decode graphs go first: they hold kernels of the group's NCCL communicator."""
        if self.workers is not None:
            if self.workers.error is None:
                with contextlib.suppress(RuntimeError):  # a worker that died meanwhile: close anyway
                    self.tp.synchronize()
            self._reset_graphs()
            self.workers.close()

    def release_group(self) -> None:
        """A worker's half of `close`: drop the decode graphs (they hold kernels of the group's NCCL
        communicator), then leave the group."""
        self._reset_graphs()
        self.tp.close()

    # ---- weights ----------------------------------------------------------------------------
    def _load_all(self, named_tensors: Iterable[tuple[str, torch.Tensor]], source: str) -> None:
        loaded = self.weight_map.load(named_tensors)
        missing = [n for n in self.weight_map.hf_names() if n not in loaded]
        if missing:
            raise ValueError(f"checkpoint {source} lacks {len(missing)} weight(s) the model needs, e.g. {missing[:5]}")

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copies into the parameters in place: their storages, and so the CUDA graphs, stay valid.
        With workers, each full tensor is broadcast to them and every rank keeps its shard."""
        if self.workers is None:
            self.weight_map.load(named_tensors)
            return
        with self._mirrored("receive_weights", reply=True):
            try:
                for name, tensor in named_tensors:
                    if self.weight_map.ignored(name):
                        continue
                    self.weight_map.resolve(name)  # an unknown name stops the load before it is sent
                    self.workers.send_weight_header(name, tuple(tensor.shape))
                    full = self.tp.broadcast(tensor.to(self.device, self.dtype).contiguous())
                    self.weight_map.load([(name, full)])
            finally:
                self.workers.send_weight_header(None, ())

    def receive_weights(self, headers) -> None:
        """A worker's half of `load_weights`: (name, shape) headers until a None name, each followed by
        the tensor's broadcast. A bad tensor is reported after the last one (every broadcast is taken)."""
        error = None
        for name, shape in headers:
            full = self.tp.broadcast(torch.empty(shape, dtype=self.dtype, device=self.device))
            try:
                self.weight_map.load([(name, full)])
            except ValueError as e:
                error = error or e
        if error is not None:
            raise error

    def load_weights_from_disk(self, path: str) -> None:
        """Every rank reads the checkpoint folder itself."""
        with self._mirrored("load_weights_from_disk", path, reply=True):
            self.weight_map.load(iter_safetensors(path))

    def get_weight(self, hf_name: str) -> torch.Tensor:
        """The full (un-sharded) weight."""
        self.weight_map.resolve(hf_name)  # an unknown name is an error before the workers hear of it
        with self._mirrored("get_weight", hf_name):
            return self.weight_map.get(hf_name)

    def offload_weights(self) -> None:
        """Move the weights to CPU (no-op on CPU) to free device memory."""
        with self._mirrored("offload_weights", reply=True):
            if self.device.type == "cuda" and self.weights_on_device:
                self._reset_graphs()
                self.model.to("cpu")
                torch.cuda.empty_cache()
            self.weights_on_device = False

    def reload_weights(self) -> None:
        with self._mirrored("reload_weights", reply=True):
            if self.device.type == "cuda" and not self.weights_on_device:
                self._reset_graphs()  # new parameter storages
                self.model.to(self.device)
            self.weights_on_device = True

    # ---- KV cache ---------------------------------------------------------------------------
    def block_bytes(self) -> int:
        """A KV block's bytes: K/V of every layer, and an MoE model's routed experts of its tokens."""
        num_layers, num_kv_heads, head_dim = self.kv_shape
        routing = self.routed_experts.bytes_per_slot() if self.routed_experts is not None else 0
        kv = self.kv_tensors * num_layers * num_kv_heads * head_dim * self.dtype.itemsize
        return self.block_size * (kv + routing)

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
        budget = total * self.args.mem_fraction_static - (total - free) - activations - self._workspace_bytes()
        blocks = int(budget // self.block_bytes())
        if blocks < self.min_kv_blocks():
            raise ValueError(
                f"GPU memory left for the KV cache ({max(budget, 0) / 2**30:.2f} GiB) holds {blocks} blocks, fewer "
                f"than one sequence of max_model_len={self.max_model_len} needs ({self.min_kv_blocks()}); raise "
                "mem_fraction_static or lower max_model_len / max_num_batched_tokens"
            )
        return blocks

    def _workspace_bytes(self) -> int:
        """Transient memory the warm-up cannot measure: attention's workspace, and the CUDA graphs'."""
        _num_layers, num_kv_heads, head_dim = self.kv_shape
        if self.attention_backend is self.reference_backend:
            return self.reference_backend.workspace_bytes(self.num_heads, num_kv_heads, head_dim, self.dtype.itemsize)
        workspace = self.attention_backend.workspace_bytes(self.num_heads, head_dim, self.args.max_num_seqs)
        if self.graphs is not None:
            # the logits buffer, and under tensor parallelism the gather's buffer and local logits
            copies = 1 if self.tp.size == 1 else 3
            workspace += copies * self.args.max_num_seqs * self.vocab_size * self.dtype.itemsize + GRAPH_RESERVE_BYTES
        return workspace

    def _warmup(self) -> None:
        """A prefill of max_num_batched_tokens tokens with sampling, to measure peak activation memory.

        Runs before the KV cache exists: attention then uses the reference backend, which skips the
        cache write (see `attention.py`). Every rank runs it in its own construction.
        """
        num_tokens = min(self.args.max_num_batched_tokens, self.args.max_num_seqs * self.max_model_len)
        num_seqs = min(self.args.max_num_seqs, num_tokens)
        seqs = [Sequence(f"warmup-{i}", [0] * (num_tokens // num_seqs), SamplingParams(top_p=0.9), seed=i)
                for i in range(num_seqs)]
        for seq in seqs:
            seq.block_table = [0] * -(-len(seq) // self.block_size)
        batch = ScheduledBatch.of(seqs, [len(seq) for seq in seqs], is_prefill=True)
        self.execute(self.inputs.plan(batch, len(seqs)))
        self.tp.synchronize()

    def allocate_kv_cache(self) -> None:
        with self._mirrored("allocate_kv_cache", reply=True):
            self._allocate_kv_cache()

    def _allocate_kv_cache(self) -> None:
        self._reset_graphs()
        num_layers, num_kv_heads, head_dim = self.kv_shape
        # Zeros, not empty: padded decode slots are masked, but NaN garbage would still leak through.
        self.kv_cache = torch.zeros(self.kv_tensors, num_layers, self.num_kv_blocks, self.block_size, num_kv_heads,
                                    head_dim, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.model.model.layers):
            layer.self_attn.attn.k_cache, layer.self_attn.attn.v_cache = self.kv_cache[0, i], self.kv_cache[-1, i]
        if self.routed_experts is not None:
            self.routed_experts.allocate(self.num_kv_blocks * self.block_size, self.device)

    def free_kv_cache(self) -> None:
        with self._mirrored("free_kv_cache", reply=True):
            self._reset_graphs()
            for layer in self.model.model.layers:
                layer.self_attn.attn.k_cache = layer.self_attn.attn.v_cache = None
            self.kv_cache = None
            if self.routed_experts is not None:
                self.routed_experts.free()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def routed_experts_of(self, seq: Sequence, num_tokens: int | None = None) -> np.ndarray | None:
        """The routed experts of `seq`'s first `num_tokens` tokens (default: its computed tokens but its last
        one), int32 [tokens, num_hidden_layers, top_k] (`RoutedExpertsCache.gather`), read before its blocks
        are freed; None for a dense model."""
        if self.routed_experts is None:
            return None
        if num_tokens is None:
            num_tokens = min(seq.num_computed_tokens, len(seq) - 1)
        return self.routed_experts.gather(seq.block_table, num_tokens, self.block_size)

    def _reset_graphs(self) -> None:
        if self.graphs is not None:
            self.graphs.reset()

    # ---- one step ---------------------------------------------------------------------------
    def run(self, batch: ScheduledBatch) -> tuple[list[int], list[float]]:
        """Run `batch`; returns (token id, log-prob) for each sampling sequence, in batch order."""
        return self.launch(batch).result()

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, previous: LaunchedStep | None = None) -> LaunchedStep:
        """Queue `batch`'s forward pass, sampling and the copy of the sampled tokens to the host;
        returns without waiting. `previous`: the step in flight whose tokens are pending inputs here."""
        if self._needs_capture(batch):
            self.capture_graphs()
        graph_rows = self._graph_rows(batch)
        plan = self.inputs.plan(batch, graph_rows or len(batch.seqs), previous.rows if previous else None,
                                graph=graph_rows > 0)
        with self._mirrored("execute", plan):
            tokens, logprobs = self.execute(plan, previous.tokens if previous is not None else None)
        if tokens is None:
            return LaunchedStep(batch, None, {}, None, None)
        both = torch.stack([tokens.to(torch.float64), logprobs.to(torch.float64)])  # token ids are exact
        cuda = self.device.type == "cuda"
        host = torch.empty(both.shape, dtype=torch.float64, pin_memory=cuda)
        host.copy_(both, non_blocking=cuda)
        copied = None
        if cuda:
            copied = torch.cuda.Event()
            copied.record()
        sample_seqs = [seq for seq, sample in zip(batch.seqs, batch.sample) if sample]
        return LaunchedStep(batch, tokens, {seq: i for i, seq in enumerate(sample_seqs)}, host, copied, self.tp)

    @torch.inference_mode()
    def execute(self, plan: StepPlan, previous_tokens: torch.Tensor | None = None):
        """Queue the forward pass and sampling of `plan` (every rank runs this); returns the sampled
        (tokens [S], log-probs [S]) device tensors, (None, None) when nothing samples."""
        backend = self.attention_backend if self.kv_cache is not None else self.reference_backend
        inputs = self.inputs.load(plan, backend, previous_tokens)
        if plan.graph:
            logits = self.graphs.replay(plan.rows, plan.num_seqs)
        else:
            hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
            if not inputs.num_samples:
                return None, None
            if inputs.logits_indices is not None:
                hidden = hidden[inputs.logits_indices]
            logits = self.model.compute_logits(hidden[: inputs.num_samples])
        return self.sampler(logits, inputs.sampling)

    def _needs_capture(self, batch: ScheduledBatch) -> bool:
        return (self.graphs is not None and not batch.is_prefill and self.kv_cache is not None
                and not self.graphs.captured)

    def _graph_rows(self, batch: ScheduledBatch) -> int:
        """The CUDA-graph bucket for a decode batch, else 0 (eager)."""
        if self.graphs is None or batch.is_prefill or self.kv_cache is None or not self.graphs.captured:
            return 0
        return self.graphs.bucket(len(batch.seqs))

    @torch.inference_mode()
    def capture_graphs(self) -> None:
        """Capture the decode graphs (on every rank: they capture the collectives too). Alone, a
        failed capture leaves decode eager; under tensor parallelism it stops the engine."""
        with self._mirrored("capture_graphs"):
            try:
                self.graphs.capture()
            except Exception:
                if self.tp.size > 1:
                    raise
                logger.exception("CUDA graph capture failed; decode runs eagerly from now on")
                self.graphs.reset()
                self.graphs = None
