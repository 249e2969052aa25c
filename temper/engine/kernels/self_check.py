"""Start-up check of the Triton kernels on the engine's device, dtype and model shape.

Each group runs once on small random inputs and is compared with the PyTorch reference; a group that
fails to compile, raises, returns non-finite values or disagrees beyond rounding is reported and left
off, so an engine on an unfamiliar GPU or triton version degrades to the reference instead of failing.
The inputs use the model's head counts, head size and block size, so the kernels compiled here are the ones
the engine runs; for a latent-attention model (``shape.latent_value_dim`` set: DeepSeek-V3's MLA) "attention"
checks its latent kernels and "layers" checks `latent_prep` (the query and the cache entry in one launch)
instead of the fused q/k norm + RoPE it never runs. The experts' groups ("fused_moe": the Triton experts, with
the decode and the prefill tile; "moe": the grouped GEMMs) are checked with the model's expert count and sizes
(``shape.experts``), against the per-expert loop, and on CUDA once more replayed from a CUDA graph with new
inputs: what they exist for is being captured, so a build of PyTorch whose grouped GEMM reads the offsets on
the host (a fallback for a dtype or GPU its kernel lacks) fails here. "routing" (the routers' top-k kernels)
runs with the model's expert count and top-k: DeepSeek-V3's sigmoid routing with one group and with a group
mask, and the softmax routing, each against its PyTorch reference.
"""

from __future__ import annotations

import logging

import torch

from temper.engine import kernels
from temper.engine.attention import AttentionMetadata, TorchPagedAttention

logger = logging.getLogger(__name__)


def enable(mode: str, device: torch.device, dtype: torch.dtype, shape, without=()) -> set[str]:
    """Pick the kernel groups for an engine and turn them on; returns them.

    mode: "torch" (none), "triton" (all, unchecked: tests under TRITON_INTERPRET=1), "auto" (on CUDA,
    the groups that pass their check here (`passing_groups`) for this dtype and model `shape`; on CPU none).
    `kernels.MOE_GROUPS` only for a model with experts (``shape.experts`` set), and without triton only "moe".
    `without`: groups left off whatever the mode (``EngineArgs.moe_kernel="grouped_mm"``: "fused_moe").
    """
    kernels.set_enabled(())  # the self-check compares with the reference, which must not dispatch to kernels
    groups: set[str] = set()
    if mode == "triton" or (mode == "auto" and device.type == "cuda"):
        every = set(kernels.GROUPS)
        groups = every if getattr(shape, "experts", None) else every - set(kernels.MOE_GROUPS)
        groups -= set(without)
        if not kernels.triton_importable():
            logger.warning("triton is not importable; the engine uses its PyTorch kernels for %s",
                           "/".join(sorted(groups & set(kernels.TRITON_GROUPS))))
            groups -= set(kernels.TRITON_GROUPS)
    if mode == "auto" and groups:
        groups = passing_groups(device, dtype, shape, groups)
    kernels.set_enabled(groups)
    return groups


def passing_groups(device: torch.device, dtype: torch.dtype, shape, groups=None) -> set[str]:
    """The kernel groups (of `groups`, default all that apply: the experts' only with ``shape.experts``) that
    agree with the reference for this device, dtype and model shape."""
    checks = {"layers": _check_layers, "attention": _check_attention, "sampler": _check_sampler,
              "fused_moe": _check_fused_moe, "moe": _check_moe, "routing": _check_routing}
    if groups is None:
        groups = set(checks) if getattr(shape, "experts", None) else set(checks) - set(kernels.MOE_GROUPS)
    passed = set()
    for group, check in checks.items():
        if group not in groups:
            continue
        try:
            with torch.inference_mode():
                error = check(device, dtype, shape)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as e:  # noqa: BLE001 (compile errors come in many types)
            logger.warning("kernel group %r failed its self-check (%s: %s); using the PyTorch reference for it",
                           group, type(e).__name__, e)
            continue
        if error is not None:
            logger.warning("kernel group %r disagrees with the reference (%s); using the PyTorch reference for it",
                           group, error)
            continue
        passed.add(group)
    return passed


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 3e-2


def _compare(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> str | None:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return f"{name}: non-finite output"
    err = ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()
    return f"{name}: relative error {err:.2e} > {tol:.0e}" if err > tol else None


def _rand(*shape, device, dtype, scale=1.0):
    return (scale * torch.randn(*shape, device=device, dtype=torch.float32)).to(dtype)


def _check_layers(device, dtype, shape) -> str | None:
    from temper.engine.kernels import elementwise
    from temper.engine.models.layers import RMSNorm, silu_and_mul
    from temper.engine.models.rotary import RotaryEmbedding, inverse_frequencies

    tol = _tolerance(dtype) / 3
    x, res = (_rand(5, shape.hidden_size, device=device, dtype=dtype) for _ in range(2))
    norm = RMSNorm(shape.hidden_size, 1e-6).to(device=device, dtype=dtype)
    out, new_res = elementwise.add_rms_norm(x, res, norm.weight, 1e-6)
    errors = [_compare("add_rms_norm", out, norm(x + res), tol), _compare("residual", new_res, x + res, tol)]
    gate_up = _rand(5, 2 * shape.intermediate_size, device=device, dtype=dtype)
    errors.append(_compare("silu_and_mul", elementwise.silu_and_mul(gate_up), silu_and_mul(gate_up), tol))
    if getattr(shape, "latent_value_dim", None):  # latent attention: its fused glue, no fused q/k norm + RoPE
        errors += _check_latent_prep(device, dtype, shape)
        return next((e for e in errors if e), None)
    hq, hkv, d = shape.num_heads, shape.num_kv_heads, shape.head_dim
    inv_freq = inverse_frequencies({"rope_type": "default", "rope_theta": 1e6}, d, 4096).to(device)
    rotary = RotaryEmbedding(d, 64, inv_freq)
    qkv = _rand(5, (hq + 2 * hkv) * d, device=device, dtype=dtype)
    positions = torch.tensor([0, 3, 17, 40, 63], device=device)
    q, k, _v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q, k = q.reshape(5, hq, d), k.reshape(5, hkv, d)
    w = torch.ones(d, device=device, dtype=dtype)
    if shape.qk_norm:
        q_norm = RMSNorm(d, 1e-6).to(device=device, dtype=dtype)
        q, k = q_norm(q), q_norm(k)
    q_ref, k_ref = rotary(positions, q, k)
    fused = qkv.clone()
    caches = torch.zeros(2, 3, shape.block_size, hkv, d, device=device, dtype=dtype)
    slots = torch.tensor([4, -1, 0, 2 * shape.block_size + 1, 1], device=device)
    elementwise.qk_norm_rope_(fused, positions, w if shape.qk_norm else None, w if shape.qk_norm else None, 1e-6,
                              rotary.cos, rotary.sin, hq, hkv, d, (caches[0], caches[1], slots))
    errors.append(_compare("qk_norm_rope q", fused[:, : hq * d], q_ref.reshape(5, -1), tol))
    errors.append(_compare("qk_norm_rope k", fused[:, hq * d : (hq + hkv) * d], k_ref.reshape(5, -1), tol))
    written = slots >= 0
    cached = caches.view(2, -1, hkv * d)[:, slots[written]]
    errors.append(_compare("qk_norm_rope k cache", cached[0], fused[written, hq * d : (hq + hkv) * d], 0.0))
    errors.append(_compare("qk_norm_rope v cache", cached[1], fused[written, (hq + hkv) * d :], 0.0))
    return next((e for e in errors if e), None)


def _check_latent_prep(device, dtype, shape) -> list[str | None]:
    """`latent_prep.latent_prep` vs `deepseek_v3.LatentAttention`'s reference glue (LatentRotary, RMSNorm,
    concatenations) at the model's head count, rank (``latent_value_dim``) and rope width (the rest of
    ``head_dim``), with YaRN's attention factor, rope_interleave on and off; and the batched W_UV GEMM
    written through a strided ``out=`` vs the reference's einsum (the fused forward's other departure)."""
    from temper.engine.kernels.latent_prep import latent_prep
    from temper.engine.models.deepseek_v3 import LatentRotary
    from temper.engine.models.layers import RMSNorm
    from temper.engine.models.rotary import yarn_parameters

    h, rank, tokens, nope = shape.num_heads, shape.latent_value_dim, 5, 128
    rope = shape.head_dim - rank
    inv_freq, factor = yarn_parameters({"rope_theta": 1e4, "factor": 40.0, "original_max_position_embeddings": 32,
                                        "mscale": 1.0, "mscale_all_dim": 0.5}, rope, 4096)
    norm = RMSNorm(rank, 1e-6).to(device=device, dtype=dtype)
    norm.weight.data = 1 + _rand(rank, device=device, dtype=dtype, scale=0.2)
    q = _rand(tokens, h, nope + rope, device=device, dtype=dtype)
    q_latent = _rand(h, tokens, rank, device=device, dtype=dtype)
    kv = _rand(tokens, rank + rope, device=device, dtype=dtype)
    positions = torch.tensor([0, 3, 17, 40, 63], device=device)
    errors = []
    for interleave in (True, False):
        rotary = LatentRotary(rope, 64, inv_freq.to(device), interleave, factor)
        q_rope, k_rope = rotary(positions, q[..., nope:], kv[:, None, rank:])
        query, entry = latent_prep(q, q_latent.transpose(0, 1), kv, positions, rotary.rope.cos, rotary.rope.sin,
                                   norm.weight, 1e-6, interleave)
        errors.append(_compare(f"latent_prep query (interleave {interleave})", query,
                               torch.cat((q_latent.transpose(0, 1), q_rope), dim=-1), _tolerance(dtype) / 3))
        errors.append(_compare(f"latent_prep entry (interleave {interleave})", entry,
                               torch.cat((norm(kv[:, :rank])[:, None, :], k_rope), dim=-1), _tolerance(dtype) / 3))
    out = _rand(tokens, h, rank + rope, device=device, dtype=dtype)
    w_uv = _rand(h, 128, rank, device=device, dtype=dtype, scale=rank**-0.5)
    values = torch.empty(tokens, h * 128, device=device, dtype=dtype)
    torch.bmm(out[..., :rank].transpose(0, 1), w_uv.transpose(1, 2), out=values.view(tokens, h, 128).transpose(0, 1))
    errors.append(_compare("W_UV bmm into a strided out", values,
                           torch.einsum("thr,hvr->thv", out[..., :rank], w_uv).reshape(tokens, -1), _tolerance(dtype)))
    return errors


def _check_attention(device, dtype, shape) -> str | None:
    if getattr(shape, "latent_value_dim", None):
        return _check_latent_attention(device, dtype, shape)
    from temper.engine.kernels.paged_attention import (
        TritonPagedAttention,
        decode_num_splits,
    )

    hq, hkv, d, bs = shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.block_size
    lengths, cached = [3 * bs + 5, 7, 2 * bs + 1], [bs, 0, 2 * bs]  # a cached prefix, a short prompt
    num_blocks = sum(-(-(n + 1) // bs) for n in lengths) + 2
    perm = torch.randperm(num_blocks).tolist()
    tables, start = [], 0
    for n in lengths:
        nb = -(-(n + 1) // bs)
        tables.append(perm[start : start + nb])
        start += nb
    width = max(map(len, tables))
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=device)
    k0, v0 = (_rand(num_blocks, bs, hkv, d, device=device, dtype=dtype) for _ in range(2))
    caches = {name: (k0.clone(), v0.clone()) for name in ("ref", "triton")}
    backends = {"ref": TorchPagedAttention(), "triton": TritonPagedAttention(hkv, d, num_sms=4)}
    scale = d**-0.5

    def step(query_lens, cached_lens, is_prefill, num_splits=None):
        total = sum(query_lens)
        qkv = _rand(total, (hq + 2 * hkv) * d, device=device, dtype=dtype)
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        q, k, v = q.view(total, hq, d), k.view(total, hkv, d), v.view(total, hkv, d)
        slots = [tables[i][p // bs] * bs + p % bs for i, (c, m) in enumerate(zip(cached_lens, query_lens))
                 for p in range(c, c + m)]
        outs = {}
        for name, backend in backends.items():
            meta = AttentionMetadata(
                is_prefill=is_prefill, slot_mapping=torch.tensor(slots, device=device), block_tables=block_tables,
                context_lens=torch.tensor([c + m for c, m in zip(cached_lens, query_lens)], device=device),
                query_lens=query_lens, cached_lens=cached_lens, block_size=bs, backend=backend,
            )
            backend.prepare(meta)
            if num_splits is not None and name == "triton":
                meta.backend_data["num_splits"] = num_splits
            outs[name] = backend.forward(q, k, v, *caches[name], meta, scale)
        return _compare(f"{'prefill' if is_prefill else 'decode'} attention", outs["triton"], outs["ref"],
                        _tolerance(dtype))

    errors = [step([n - c for n, c in zip(lengths, cached)], cached, True)]
    errors.append(step([1] * 3, lengths, False, num_splits=1))
    errors.append(step([1] * 3, [n + 1 for n in lengths], False, num_splits=decode_num_splits(1, hkv, 132)))
    return next((e for e in errors if e), None)


def _check_latent_attention(device, dtype, shape) -> str | None:
    """A latent model's backend (``shape.latent_value_dim`` set; one cache entry of ``head_dim`` values,
    the first latent_value_dim of which are the value) vs the reference: a prefill kernel step (one sequence
    after a cached prefix, one without, one single query after a prefix), then decode steps with one split
    and with many, on the model's head count. A failure leaves the whole group (prefill and decode) to the
    reference."""
    from temper.engine.kernels.latent_attention import TritonLatentAttention, latent_dims_supported

    h, d, dv, bs = shape.num_heads, shape.head_dim, shape.latent_value_dim, shape.block_size
    reason = latent_dims_supported(dv, d - dv)
    if reason is not None:
        raise ValueError(reason)
    lengths, cached = [3 * bs + 5, 7, 2 * bs + 1], [bs, 0, 2 * bs]
    widths = [-(-(n + 2) // bs) for n in lengths]
    perm = torch.randperm(sum(widths) + 2).tolist()
    tables = [perm[sum(widths[:i]) : sum(widths[: i + 1])] for i in range(len(lengths))]
    block_tables = torch.tensor([t + [0] * (max(widths) - len(t)) for t in tables], device=device)
    cache0 = _rand(len(perm), bs, 1, d, device=device, dtype=dtype)
    caches = {"ref": cache0.clone(), "triton": cache0.clone()}
    backends = {"ref": TorchPagedAttention(), "triton": TritonLatentAttention(h, dv, num_sms=4)}

    def step(query_lens, cached_lens, num_splits=None):
        q = _rand(sum(query_lens), h, d, device=device, dtype=dtype)
        entry = _rand(sum(query_lens), 1, d, device=device, dtype=dtype)
        slots = [tables[i][p // bs] * bs + p % bs for i, (c, m) in enumerate(zip(cached_lens, query_lens))
                 for p in range(c, c + m)]
        outs = {}
        for name, backend in backends.items():
            meta = AttentionMetadata(
                is_prefill=max(query_lens) > 1, slot_mapping=torch.tensor(slots, device=device),
                block_tables=block_tables, query_lens=query_lens, cached_lens=cached_lens, block_size=bs,
                context_lens=torch.tensor([c + m for c, m in zip(cached_lens, query_lens)], device=device),
                backend=backend,
            )
            backend.prepare(meta)
            if num_splits is not None and name == "triton":
                meta.backend_data["num_splits"] = num_splits
            outs[name] = backend.forward(q, entry, entry, caches[name], caches[name], meta, d**-0.5)[..., :dv]
        return _compare(f"latent {'prefill' if max(query_lens) > 1 else 'decode'} attention", outs["triton"],
                        outs["ref"], _tolerance(dtype)) or _compare("latent cache", caches["triton"],
                                                                    caches["ref"], 0.0)

    errors = [step([n - c for n, c in zip(lengths, cached)], cached)]
    errors.append(step([1] * 3, lengths, num_splits=1))
    errors.append(step([1] * 3, [n + 1 for n in lengths], num_splits=5))
    return next((e for e in errors if e), None)


def _check_sampler(device, dtype, shape) -> str | None:
    from temper.engine.kernels.sampling import sample
    from temper.engine.sampler import Sampler, SamplingTensors, noise_keys

    rows = 4
    logits = _rand(rows, shape.vocab_size, device=device, dtype=dtype, scale=3.0)
    t = SamplingTensors(
        temperatures=torch.tensor([0.6, 1.0, 0.0, 1.3], device=device),
        top_k=torch.full((rows,), shape.vocab_size, device=device), top_p=torch.ones(rows, device=device),
        min_p=torch.zeros(rows, device=device),
        keys=torch.tensor([noise_keys(7, p) for p in range(rows)], dtype=torch.int64, device=device),
        all_greedy=False, needs_filter=False,
    )
    assert not kernels.enabled("sampler", logits), "the reference must run with the sampler kernel off"
    ref_tokens, ref_logprobs = Sampler()(logits, t)
    tokens, logprobs = sample(logits, t.temperatures, t.keys, t.all_greedy)
    if tokens.tolist() != ref_tokens.tolist():
        return f"sampled tokens {tokens.tolist()} != reference {ref_tokens.tolist()}"
    return _compare("sampler log-probs", logprobs, ref_logprobs, 1e-4)


def _check_moe(device, dtype, shape) -> str | None:
    """`dispatch_grouped` vs the loop (`_check_experts`); ``torch._grouped_mm`` needs 16-byte aligned rows,
    and on CUDA bfloat16."""
    from temper.engine.models.moe import dispatch_grouped, grouped_gemm_fits

    _num_experts, hidden, size, _top_k = shape.experts
    if not grouped_gemm_fits(hidden, size, dtype):
        return f"hidden size {hidden} / expert size {size} rows are not 16-byte aligned in {dtype}"
    if device.type == "cuda" and dtype != torch.bfloat16:
        return f"torch._grouped_mm has a CUDA kernel for bfloat16 only, not {dtype}"
    return _check_experts("grouped experts", dispatch_grouped, device, dtype, shape)


def _check_fused_moe(device, dtype, shape) -> str | None:
    """The Triton experts (`fused_moe.fused_experts`, looked up at call time) vs the loop
    (`_check_experts`), with each tile `fused_moe.pick_config` takes: decode (few tokens), prefill and large
    prefill (just past each one's pairs-per-expert threshold)."""
    from temper.engine.kernels import fused_moe

    def fused(*args):
        return fused_moe.fused_experts(*args)

    num_experts, _hidden, _size, top_k = shape.experts
    error = _check_experts("fused experts", fused, device, dtype, shape)
    for tile, pairs_per_expert in (("prefill", fused_moe.DECODE_PAIRS_PER_EXPERT),
                                   ("large prefill", fused_moe.LARGE_PAIRS_PER_EXPERT)):
        tokens = (pairs_per_expert * num_experts) // top_k + 1
        error = error or _check_experts(f"fused experts ({tile} tile)", fused, device, dtype, shape, tokens,
                                        graph=False)
    return error


def _check_experts(name, dispatch, device, dtype, shape, tokens=None, graph=True) -> str | None:
    """`dispatch` vs `dispatch_loop` with ``shape.experts`` = (experts, hidden, intermediate size of this
    rank, top-k), `tokens` tokens (default 2 x experts + 5), one expert left without tokens; on CUDA (with
    `graph`) also replayed from a CUDA graph with new inputs."""
    from temper.engine.models.moe import dispatch_loop

    num_experts, hidden, size, top_k = shape.experts
    tokens = tokens or 2 * num_experts + 5
    w_gate_up = _rand(num_experts, 2 * size, hidden, device=device, dtype=dtype, scale=hidden**-0.5)
    w_down = _rand(num_experts, hidden, size, device=device, dtype=dtype, scale=size**-0.5)

    def inputs():
        x = _rand(tokens, hidden, device=device, dtype=dtype)
        scores = torch.rand(tokens, num_experts, device=device)
        if num_experts > top_k:
            scores[:, -1] = -1.0  # the last expert gets no token
        weights, ids = scores.topk(top_k, dim=-1)
        return x, weights.to(dtype), ids

    x, weights, ids = inputs()
    error = _compare(name, dispatch(w_gate_up, w_down, x, weights, ids),
                     dispatch_loop(w_gate_up, w_down, x, weights, ids), _tolerance(dtype))
    if error is not None or device.type != "cuda" or not graph:
        return error
    static = [t.clone() for t in (x, weights, ids)]
    dispatch(w_gate_up, w_down, *static)  # warm-up outside the capture
    torch.cuda.synchronize(device)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        out = dispatch(w_gate_up, w_down, *static)
    for buffer, new in zip(static, inputs()):
        buffer.copy_(new)
    cuda_graph.replay()
    return _compare(f"{name} in a CUDA graph", out, dispatch_loop(w_gate_up, w_down, *static), _tolerance(dtype))


def _check_routing(device, dtype, shape) -> str | None:
    """`routing.sigmoid_topk` vs `deepseek_v3.grouped_topk` (one group; a group mask where the expert count
    splits into groups of two or more) and `routing.softmax_topk` vs `moe.softmax_topk` (logits in `dtype`
    and in float32), on random logits without ties of 7 tokens with the model's expert count and top-k: the
    same experts per token, weights to float32 rounding (softmax: of the output dtype)."""
    from temper.engine.kernels import routing
    from temper.engine.kernels.common import next_pow2
    from temper.engine.models.deepseek_v3 import grouped_topk
    from temper.engine.models.moe import softmax_topk

    num_experts, _hidden, _size, top_k = shape.experts
    # distinct values k * 8 / P (P: E's next power of two, |k| <= P / 2) in random order: exact in bf16
    ranks = torch.stack([torch.randperm(num_experts) for _ in range(7)]) - num_experts // 2
    logits = (ranks * (8.0 / next_pow2(num_experts))).to(device)
    bias = _rand(num_experts, device=device, dtype=torch.float32, scale=0.3)
    configs = [(1, 1, True, 2.5)] + [(g, g // 2, False, 1.0) for g in (8, 4, 2)
                                     if num_experts % g == 0 and num_experts // g >= 2
                                     and (g // 2) * (num_experts // g) >= top_k][:1]
    errors = []
    for num_groups, keep, renormalize, scale in configs:
        args = (top_k, num_groups, keep, renormalize, scale)
        errors.append(_compare_routing(f"sigmoid routing, {keep} of {num_groups} groups",
                                       routing.sigmoid_topk(logits, bias, *args), grouped_topk(logits, bias, *args),
                                       1e-5))
    for logits_dtype in dict.fromkeys((dtype, torch.float32)):
        x = logits.to(logits_dtype)
        errors.append(_compare_routing(f"softmax routing in {logits_dtype}", routing.softmax_topk(x, top_k, True),
                                       softmax_topk(x, top_k, True), _tolerance(logits_dtype)))
    return next((e for e in errors if e), None)


def _compare_routing(name: str, out, ref, tol: float) -> str | None:
    """(weights, ids) [T, k] vs the reference's: the same ids per row in any order, their weights close."""
    (weights, ids), (ref_weights, ref_ids) = out, ref
    order, ref_order = ids.sort(dim=1)[1], ref_ids.sort(dim=1)[1]
    if not torch.equal(ids.gather(1, order), ref_ids.gather(1, ref_order)):
        return f"{name}: experts {ids.tolist()} != reference {ref_ids.tolist()}"
    if weights.dtype != ref_weights.dtype:
        return f"{name}: weights in {weights.dtype}, reference in {ref_weights.dtype}"
    return _compare(f"{name} weights", weights.gather(1, order), ref_weights.gather(1, ref_order), tol)
