"""Latent-attention prefill (issue 16): the Triton kernel (`temper/engine/kernels/latent_attention.py`) vs the
reference attention backend (`TorchPagedAttention`: per sequence, the context gathered from the cache and
expanded to every head, then SDPA) on one GPU.

Workload: one prefill step of --batch sequences of --tokens new tokens each after --cached cached ones, over a
paged cache of DeepSeek-V3's / Moonlight's latent entries (kv_lora_rank 512 + rope 64 = 576 bf16 values per
token, pages of --page, blocks placed at random; the step's own entries already written, as the engine writes
them before attending), for each head count in --heads (16: Moonlight, and DeepSeek-V3 per rank under tensor
parallelism 8; 128: DeepSeek-V3 on one rank). Each path is timed with CUDA events, median of --repeats after a
warm-up (`median_cuda_ms`); per-step preparation (the reference's gather indices, the kernel's tiles) is done
once, untimed, as the engine does it once per step for every layer. The kernel runs with every tile of
`LATENT_PREFILL_CONFIGS` (the first is the engine's); one that does not compile here is reported. TFLOP/s count
the causal (query, key) pairs x heads x (576 + 512) x 2. The outputs are compared with the reference's.

    python benchmarks/mla_prefill.py --out mla_prefill.json
"""

from __future__ import annotations

import argparse
import json

import torch

from temper.engine.attention import AttentionMetadata, TorchPagedAttention

RANK, ROPE = 512, 64


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=512, help="new tokens per sequence")
    p.add_argument("--cached", type=int, default=0, help="cached prefix tokens per sequence")
    p.add_argument("--heads", default="16,128", help="comma-separated query head counts")
    p.add_argument("--page", type=int, default=16)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def bench_heads(num_heads: int, args) -> dict:
    from temper.engine.kernels import latent_attention as la  # Triton: CUDA machines only
    from temper.engine.kernels.common import median_cuda_ms

    device, dim, scale = torch.device("cuda"), RANK + ROPE, (RANK + ROPE) ** -0.5
    g = torch.Generator().manual_seed(0)
    query_lens, cached_lens = [args.tokens] * args.batch, [args.cached] * args.batch
    lengths = torch.full((args.batch,), args.cached + args.tokens)
    cache, tables = la.random_paged_cache(lengths, args.page, dim, torch.bfloat16, device, g)
    q = torch.randn(sum(query_lens), num_heads, dim, generator=g).to(device, torch.bfloat16)
    new = torch.arange(args.cached, args.cached + args.tokens, device=device)
    slots = (tables[:, new // args.page] * args.page + new % args.page).flatten()  # the step's own entries
    entries = cache.view(-1, 1, dim)[slots]
    reference = TorchPagedAttention()
    meta = AttentionMetadata(is_prefill=True, slot_mapping=slots, block_tables=tables,
                             context_lens=lengths.to(device), query_lens=query_lens, cached_lens=cached_lens,
                             block_size=args.page, backend=reference)
    reference.prepare(meta)

    def run_reference():
        return reference.forward(q, entries, entries, cache, cache, meta, scale, kv_stored=True)

    expected = run_reference()[..., :RANK].float()
    run_reference()
    pairs = args.batch * (args.tokens * args.cached + args.tokens * (args.tokens + 1) // 2)
    tflop = pairs * num_heads * (dim + RANK) * 2 / 1e12
    result = {"heads": num_heads, "tflop": tflop, "reference_ms": median_cuda_ms(run_reference, args.repeats),
              "kernel": []}
    for config in la.LATENT_PREFILL_CONFIGS:
        tiles, seq_info = la.latent_prefill_arguments(query_lens, cached_lens, num_heads, config[0], device)

        def call(config=config, tiles=tiles, seq_info=seq_info):
            return la.latent_prefill(q, cache, tables, tiles, seq_info, scale, RANK, *config)

        try:
            out = call().float()
        except Exception as e:  # noqa: BLE001 (compile and out-of-resources errors come in many types)
            result["kernel"].append({"config": list(config), "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        ms = median_cuda_ms(call, args.repeats)
        result["kernel"].append({"config": list(config), "ms": ms, "tflop_per_s": tflop / ms * 1e3,
                                 "rel_error_vs_reference": ((out - expected).norm() / expected.norm()).item()})
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("mla_prefill: needs a CUDA GPU")
        return 1
    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch,
               "tokens": args.tokens, "cached": args.cached, "page": args.page, "results": []}
    for num_heads in (int(h) for h in args.heads.split(",")):
        r = bench_heads(num_heads, args)
        summary["results"].append(r)
        print(f"heads {num_heads:3d}, {args.batch} x {args.tokens} new tokens after {args.cached} cached: reference "
              f"{r['reference_ms']:.3f} ms ({r['tflop'] / r['reference_ms'] * 1e3:.0f} TFLOP/s)")
        for k in r["kernel"]:
            if "error" in k:
                print(f"    kernel tile {tuple(k['config'])}: does not run here ({k['error']})")
                continue
            print(f"    kernel tile {tuple(k['config'])} (BLOCK_M, BLOCK_N, warps, stages): {k['ms']:.3f} ms "
                  f"({k['tflop_per_s']:.0f} TFLOP/s), {r['reference_ms'] / k['ms']:.1f}x the reference; rel. error "
                  f"vs it {k['rel_error_vs_reference']:.1e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
