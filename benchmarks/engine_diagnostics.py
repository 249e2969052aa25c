"""Diagnostic parts of the engine benchmark (run by `engine_throughput.py`, each in its own process):
where the time goes rather than how fast the workload runs.

- kernels: the decode step's GEMMs (cuBLAS and cuBLASLt), decode attention alone per tile and split count,
  prefill attention TFLOP/s, the sampler kernel vs the reference;
- profile: the workload run eagerly under torch.profiler at five batch sizes;
- timeline: the workload once, every step's time and K/V reads binned by batch size;
- host: streaming steps (what the server runs) against their decode graph and sampler replayed alone.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch
from engine_workload import emit, make_requests, median_rate, sync, timed_generate


def part_kernels(args, device: torch.device, workdir: Path, budget: float) -> None:
    """Decode attention alone on a workload-like batch: achieved K/V bandwidth per tile shape; prefill
    attention TFLOP/s; the sampler kernel vs the reference sampler."""
    if device.type != "cuda":
        emit("skip", part="kernels", reason="GPU only")
        return
    from temper.engine.kernels import paged_attention as pa

    deadline = time.perf_counter() + budget
    prompts, outputs = make_requests(args, 151936)
    contexts = [len(p) + o // 2 for p, o in zip(prompts, outputs)]  # the average context of each request
    _bench_gemms(device, deadline)
    for batch in (256, 128, 64, 32):
        _bench_decode(pa, contexts[:batch], device, deadline)
    _bench_prefill_and_sampler(device, deadline)


def _cuda_ms(fn, device: torch.device, repeats: int = 7) -> float:
    """Median milliseconds of `fn` between CUDA events, after one warm-up call."""
    from temper.engine.kernels.common import median_cuda_ms

    fn()
    sync(device)
    return median_cuda_ms(fn, repeats)


def _bench_gemms(device: torch.device, deadline: float) -> None:
    """The 0.6B shape's decode-step matmuls at several batch sizes: 28 layers x (qkv, o, gate_up, down)
    replayed from one CUDA graph (as the engine runs them), and the LM head; ms and weight bytes/s."""
    from temper.engine.kernels.common import cuda_graph_of

    h, inter, hq, hkv, d, layers, vocab = 1024, 3072, 16, 8, 128, 28, 151936
    dims = [(h, (hq + 2 * hkv) * d), (hq * d, h), (h, 2 * inter), (inter, h)]  # (in, out)
    weights = [[torch.randn(n, k, device=device, dtype=torch.bfloat16) * 0.02 for k, n in dims] for _ in range(layers)]
    lm_head = torch.randn(vocab, h, device=device, dtype=torch.bfloat16) * 0.02
    layer_bytes = layers * sum(k * n for k, n in dims) * 2
    for batch in (256, 192, 128, 64, 32, 16, 8, 1):
        if time.perf_counter() > deadline:
            return
        xs = {k: torch.randn(batch, k, device=device, dtype=torch.bfloat16) for k in {k for k, _ in dims}}

        def step(xs=xs):
            for layer in weights:
                for (k, _), w in zip(dims, layer, strict=True):
                    torch.nn.functional.linear(xs[k], w)

        for library in ("cublas", "cublaslt"):
            torch.backends.cuda.preferred_blas_library(library)
            step()
            sync(device)
            graph = cuda_graph_of(step, 1, device)
            ms = _cuda_ms(graph.replay, device)
            head_ms = _cuda_ms(lambda xs=xs: torch.nn.functional.linear(xs[h], lm_head), device)
            emit("gemm", batch=batch, library=library, layers_ms=ms, layers_bytes_per_s=layer_bytes / ms * 1e3,
                 lm_head_ms=head_ms, lm_head_bytes_per_s=lm_head.numel() * 2 / head_ms * 1e3)
            del graph
    torch.backends.cuda.preferred_blas_library("default")


def _bench_decode(pa, contexts: list[int], device: torch.device, deadline: float) -> None:
    """Decode attention alone over `contexts`: each of the engine's tiles, with the rows in the given
    order and longest first (as the scheduler orders a decode batch), at the engine's split count and
    at two and four times as many."""
    hq, hkv, d, bs = 16, 8, 128, 16
    batch = len(contexts)
    q = torch.randn(batch, hq, d, device=device, dtype=torch.bfloat16)
    kv_bytes = 2 * sum(contexts) * hkv * d * 2
    base = pa.decode_num_splits(batch, hkv, torch.cuda.get_device_properties(device).multi_processor_count)
    g = torch.Generator().manual_seed(0)
    blocks = sum(-(-c // bs) for c in contexts)
    perm = torch.randperm(blocks, generator=g)
    tables, start = [], 0
    for c in contexts:
        nb = -(-c // bs)
        tables.append(perm[start : start + nb].tolist())
        start += nb
    k_cache = torch.randn(blocks, bs, hkv, d, device=device, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    width = max(map(len, tables))
    for order in ("given", "longest-first"):
        rows = sorted(range(batch), key=lambda i: -contexts[i]) if order != "given" else list(range(batch))
        bt = torch.tensor([tables[i] + [0] * (width - len(tables[i])) for i in rows], device=device)
        context = torch.tensor([contexts[i] for i in rows], device=device)
        for splits in (base, 2 * base, 4 * base):
            for config in pa.DECODE_CONFIGS:
                if time.perf_counter() > deadline:
                    return
                tile = dict(zip(("block_n", "num_warps", "num_stages"), config, strict=True))
                try:
                    rate = median_rate(lambda config=config, splits=splits, bt=bt, context=context: pa.decode_attention(
                        q, k_cache, v_cache, bt, context, d**-0.5, splits, *config), kv_bytes, device)
                    emit("decode_kernel", batch=batch, splits=splits, order=order, bytes_per_s=rate, **tile)
                except Exception as e:  # noqa: BLE001
                    emit("decode_kernel", batch=batch, splits=splits, order=order,
                         error=f"{type(e).__name__}: {e}"[:300], **tile)


def _bench_prefill_and_sampler(device, deadline) -> None:
    from temper.engine.attention import AttentionMetadata
    from temper.engine.kernels import paged_attention as pa
    from temper.engine.kernels.sampling import sample
    from temper.engine.sampler import Sampler, SamplingTensors

    hq, hkv, d, bs, n, seqs = 16, 8, 128, 16, 512, 16
    if time.perf_counter() < deadline:
        blocks = seqs * n // bs
        k_cache = torch.randn(blocks, bs, hkv, d, device=device, dtype=torch.bfloat16)
        v_cache = torch.randn_like(k_cache)
        backend = pa.TritonPagedAttention(hkv, d, 132)
        meta = AttentionMetadata(
            is_prefill=True, slot_mapping=torch.arange(seqs * n, device=device),
            block_tables=torch.arange(blocks, device=device).view(seqs, -1),
            context_lens=torch.full((seqs,), n, device=device), query_lens=[n] * seqs, cached_lens=[0] * seqs,
            block_size=bs, backend=backend)
        backend.prepare(meta)
        q = torch.randn(seqs * n, hq, d, device=device, dtype=torch.bfloat16)
        flops = 4 * hq * d * seqs * n * (n + 1) / 2
        emit("prefill_kernel", tokens=seqs * n, flops_per_s=median_rate(
            lambda: pa.prefill_attention(q, k_cache, v_cache, meta.block_tables, meta.backend_data["tiles"],
                                         meta.backend_data["seq_info"], d**-0.5), flops, device))
    if time.perf_counter() < deadline:
        rows, vocab = 256, 151936
        logits = torch.randn(rows, vocab, device=device, dtype=torch.bfloat16)
        t = SamplingTensors(torch.full((rows,), 0.6, device=device), torch.full((rows,), vocab, device=device),
                            torch.ones(rows, device=device), torch.zeros(rows, device=device),
                            torch.randint(0, 2**32, (rows, 2), device=device), False, False)
        ref = median_rate(lambda: Sampler()(logits, t), 1, device)
        fast = median_rate(lambda: sample(logits, t.temperatures, t.keys, False), 1, device)
        emit("sampler_kernel", rows=rows, reference_ms=1e3 / ref, kernel_ms=1e3 / fast)


def part_profile(args, device: torch.device, workdir: Path, budget: float) -> None:
    """Where a decode step's GPU time goes as the batch shrinks: the 0.6B workload run eagerly (no CUDA
    graphs, so the profiler sees every kernel); once every request decodes, and again each time the
    batch has fallen to 128, 64, 32 and 16 sequences, 5 steps under torch.profiler: the kernels by GPU
    time, the K/V bytes those steps' attention reads, and the step's wall time."""
    from temper.engine import EngineArgs, LLMEngine

    if device.type != "cuda":
        emit("skip", part="profile", reason="GPU only")
        return
    engine = LLMEngine(EngineArgs(model=str(workdir / "qwen3-0.6b"), device=args.device,
                                  max_model_len=args.max_model_len, seed=0, cuda_graphs=False))
    cfg = engine.hf_config
    kv_token_bytes = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 2
    profile_decode(engine, args, device, time.perf_counter() + budget, kv_token_bytes, (256, 128, 64, 32, 16))


def profile_decode(engine, args, device: torch.device, deadline: float, kv_token_bytes: int,
                   batches: tuple[int, ...], steps: int = 5) -> None:
    """The workload on an eager `engine` (no CUDA graphs, so the profiler sees every kernel): once the
    batch has fallen to each of `batches`, `steps` steps under torch.profiler; emits the kernels by GPU
    time, the cache bytes those steps' attention reads (`kv_token_bytes` a token) and the step's wall time."""
    from torch.profiler import ProfilerActivity, profile

    from temper.engine import SamplingParams

    prompts, output_lens = make_requests(args, engine.hf_config.vocab_size)
    for p, n in zip(prompts, output_lens):
        engine.add_request(p, SamplingParams(temperature=0.6, max_new_tokens=n, ignore_eos=True))
    while engine.scheduler.waiting and time.perf_counter() < deadline:
        engine.step()
    for _ in range(20):
        engine.step()
    for target in batches:
        while len(engine.scheduler.running) > target and time.perf_counter() < deadline:
            engine.step()
        if time.perf_counter() > deadline or not engine.scheduler.running:
            return
        running = engine.scheduler.running
        batch, context = len(running), sum(len(seq) for seq in running)
        sync(device)
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                engine.step()
            sync(device)
        wall = (time.perf_counter() - start) / steps
        rows = []
        for evt in prof.key_averages():
            t = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
            if t:
                rows.append((t / steps / 1e3, evt.key[:90], evt.count // steps))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        attention = sum(ms for ms, key, _ in rows if "_decode" in key)
        emit("profile", batch=batch, step_wall_ms=wall * 1e3, gpu_ms_per_step=total, attention_ms=attention,
             kv_bytes=int((context + batch * (steps - 1) / 2) * kv_token_bytes),
             top=[{"ms": round(ms, 3), "share": round(ms / total, 3), "calls": calls, "kernel": key}
                  for ms, key, calls in rows[:18]])


def part_timeline(args, device: torch.device, workdir: Path, budget: float) -> None:
    """Where the 0.6B run's time goes over its steps: the workload once (CUDA graphs, overlap) with each
    step's batch recorded, the time between step returns charged to the batch launched one step
    earlier (with overlapped scheduling the host waits for that batch), binned by batch size: steps,
    seconds, ms a step and the K/V bytes the decode steps read (what a step's attention must move)."""
    from temper.engine import EngineArgs, LLMEngine, SamplingParams

    engine = LLMEngine(EngineArgs(model=str(workdir / "qwen3-0.6b"), device=args.device,
                                  max_model_len=args.max_model_len, seed=0))
    cfg = engine.hf_config
    kv_token_bytes = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 2
    engine.generate([[1] * 40, [2] * 70], SamplingParams(temperature=0.6, max_new_tokens=24, ignore_eos=True))
    prompts, output_lens = make_requests(args, cfg.vocab_size)
    params = [SamplingParams(temperature=0.6, max_new_tokens=n, ignore_eos=True) for n in output_lens]
    timeline: list = []
    run = timed_generate(engine, prompts, params, budget * args.budget_scale, timeline)
    overlap = engine._overlap
    engine.close()
    bins: dict[str, dict] = {}
    # Overlapped, the wait after step i is for the batch launched at step i; otherwise step i+1 runs its own.
    for (t0, launched), (t1, own) in itertools.pairwise(timeline):
        shape = launched if overlap else own
        if shape is None:
            continue
        prefill, seqs, context = shape
        low, high = (0, 16) if seqs <= 16 else (16, 32) if seqs <= 32 else (32 * ((seqs - 1) // 32), 32 * -(-seqs // 32))
        key = "prefill" if prefill else f"B {low + 1}-{high}"
        b = bins.setdefault(key, {"steps": 0, "seconds": 0.0, "kv_bytes": 0, "seqs": 0})
        b["steps"] += 1
        b["seconds"] += t1 - t0
        b["seqs"] += seqs
        if not prefill:
            b["kv_bytes"] += context * kv_token_bytes
    emit("timeline", seconds=run["seconds"], output_tokens=run["output_tokens"], steps=run["steps"],
         bins=[{"bin": k, **v} for k, v in sorted(bins.items(), key=lambda kv: -kv[1]["seqs"] / kv[1]["steps"])])


def part_host(args, device: torch.device, workdir: Path, budget: float) -> None:
    """Whether the host keeps the GPU waiting: the 0.6B workload stepped as the server steps it
    (`engine.step()`: overlapped, every token detokenized), and at batch 256, 224, ... 16 the wall time of
    20 steps against the same batch's decode graph replayed alone plus the sampler kernel (CUDA events).
    The difference is time the GPU waits for the host (or for anything outside those kernels)."""
    from temper.engine import EngineArgs, LLMEngine, SamplingParams
    from temper.engine.kernels.sampling import sample

    if device.type != "cuda":
        emit("skip", part="host", reason="GPU only (decode graphs)")
        return
    engine = LLMEngine(EngineArgs(model=str(workdir / "qwen3-0.6b"), device=args.device,
                                  max_model_len=args.max_model_len, seed=0))
    runner = engine.model_runner
    warm = SamplingParams(temperature=0.6, max_new_tokens=24, ignore_eos=True)
    engine.generate([[1] * 40, [2] * 70, [3] * 20], warm)  # graphs captured
    prompts, output_lens = make_requests(args, engine.hf_config.vocab_size)
    for p, n in zip(prompts, output_lens):
        engine.add_request(p, SamplingParams(temperature=0.6, max_new_tokens=n, ignore_eos=True))
    deadline = time.perf_counter() + budget
    while engine.scheduler.waiting and time.perf_counter() < deadline:
        engine.step()
    steps = 20
    for target in (256, 224, 192, 160, 128, 96, 64, 32, 16):
        while len(engine.scheduler.running) > target and time.perf_counter() < deadline:
            engine.step()
        if time.perf_counter() > deadline or not engine.scheduler.running:
            break
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        sync(device)
        wall_ms = (time.perf_counter() - start) / steps * 1e3
        batch = len(engine.scheduler.running)
        if not batch:
            break
        replay = runner.graphs.graphs[runner.graphs.bucket(batch)]  # the inputs of the last step: same work
        logits = runner.graphs.logits[:batch]
        temperatures = torch.full((batch,), 0.6, device=device)
        keys = torch.randint(0, 2**31, (batch, 2), device=device)
        graph_ms = _cuda_ms(replay, device, 9)
        sampler_ms = _cuda_ms(lambda x=logits, t=temperatures, k=keys: sample(x, t, k, False), device, 9)
        emit("host", batch=batch, step_wall_ms=wall_ms, graph_ms=graph_ms, sampler_ms=sampler_ms,
             waiting_ms=wall_ms - graph_ms - sampler_ms)
    engine.close()


def report_lines(by_kind: dict[str, list[dict]], bw: float | None) -> list[str]:
    """The summary's lines for these parts' results (by kind; `bw`: the measured copy rate, bytes/s)."""
    lines = []
    for k in by_kind.get("decode_kernel", []):
        where = f"{k.get('order', 'given')} order"
        if "error" in k:
            lines.append(f"decode kernel B={k['batch']} {where} tile {k['block_n']}/{k['num_warps']}/"
                         f"{k['num_stages']}: {k['error']}")
        else:
            lines.append(f"decode kernel B={k['batch']} {where} splits={k['splits']} tile (BLOCK_N/warps/stages) "
                         f"{k['block_n']}/{k['num_warps']}/{k['num_stages']}: {k['bytes_per_s'] / 1e12:.2f} TB/s of K/V"
                         + (f" ({k['bytes_per_s'] / (bw / 2):.0%} of copy read rate)" if bw else ""))
    for k in by_kind.get("profile", []):
        lines.append(f"profile, eager decode at batch {k['batch']}: {k['step_wall_ms']:.2f} ms wall, "
                     f"{k['gpu_ms_per_step']:.2f} ms of kernels per step, of which decode attention "
                     f"{k['attention_ms']:.2f} ms for {k['kv_bytes'] / 1e9:.2f} GB of K/V "
                     f"({k['kv_bytes'] / max(k['attention_ms'], 1e-9) / 1e9:.2f} TB/s), the rest "
                     f"{k['gpu_ms_per_step'] - k['attention_ms']:.2f} ms")
        for row in k["top"]:
            lines.append(f"  {row['ms']:7.3f} ms {row['share']:6.1%} x{row['calls']:<4} {row['kernel']}")
    for k in by_kind.get("timeline", []):
        lines.append(f"timeline: {k['output_tokens']} tokens in {k['seconds']:.2f}s, {k['steps']} steps; per batch-size bin:")
        for b in k["bins"]:
            rate = f", K/V {b['kv_bytes'] / 1e9 / b['steps']:.2f} GB a step = {b['kv_bytes'] / b['seconds'] / 1e12:.2f} TB/s" \
                if b["kv_bytes"] else ""
            lines.append(f"  {b['bin']:<10} {b['steps']:>5} steps {b['seconds']:7.3f}s "
                         f"{1e3 * b['seconds'] / b['steps']:6.2f} ms/step{rate}")
    for k in by_kind.get("host", []):
        lines.append(f"host, streaming steps at batch {k['batch']}: {k['step_wall_ms']:.2f} ms a step, decode graph "
                     f"{k['graph_ms']:.2f} + sampler {k['sampler_ms']:.2f} ms alone: GPU waiting {k['waiting_ms']:.2f} ms")
    for k in by_kind.get("prefill_kernel", []):
        lines.append(f"prefill kernel ({k['tokens']} tokens): {k['flops_per_s'] / 1e12:.0f} TFLOP/s")
    for k in by_kind.get("sampler_kernel", []):
        lines.append(f"sampler B={k['rows']}: kernel {k['kernel_ms']:.3f} ms vs reference {k['reference_ms']:.3f} ms")
    return lines
