"""Latent-attention decode (issue 16): the Triton kernel (`temper/engine/kernels/latent_attention.py`) vs the
reference attention backend (`TorchPagedAttention`: gather + SDPA) on one GPU.

Workload: one decode step of --batch sequences of --context tokens each over a paged cache of DeepSeek-V3's
/ Moonlight's latent entries (kv_lora_rank 512 + rope 64 = 576 bf16 values per token, pages of --page),
blocks placed at random, for each head count in --heads (16: Moonlight, and DeepSeek-V3 per rank under
tensor parallelism 8; 128: DeepSeek-V3 on one rank). Each path is timed with CUDA events, median of
--repeats after a warm-up (`median_cuda_ms`); the kernel both as a plain call and replayed from a CUDA graph
of 8 calls (the engine's decode runs from graphs; per-call time shown), with the default tile and split
count and with those `tune_latent_decode` picks on this GPU for this batch and context. Achieved bandwidth
counts each cache entry once (batch x context x 576 x 2 bytes), however many head blocks read it. The
outputs are compared with the reference's.

    python benchmarks/mla_decode.py --out mla.json
"""

from __future__ import annotations

import argparse
import json

import torch

from temper.engine.attention import AttentionMetadata, TorchPagedAttention

RANK, ROPE = 512, 64


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--heads", default="16,128", help="comma-separated query head counts")
    p.add_argument("--page", type=int, default=16)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def bench_heads(num_heads: int, args) -> dict:
    from temper.engine.kernels import latent_attention as la  # Triton: CUDA machines only
    from temper.engine.kernels.common import cuda_graph_of, median_cuda_ms

    device, dim = torch.device("cuda"), RANK + ROPE
    g = torch.Generator().manual_seed(0)
    lengths = torch.full((args.batch,), args.context)
    cache, tables = la.random_paged_cache(lengths, args.page, dim, torch.bfloat16, device, g)
    q = torch.randn(args.batch, num_heads, dim, generator=g).to(device, torch.bfloat16)
    context_lens, scale = lengths.to(device), dim**-0.5
    reference = TorchPagedAttention()
    meta = AttentionMetadata(is_prefill=False, slot_mapping=torch.empty(0, dtype=torch.long, device=device),
                             block_tables=tables, context_lens=context_lens, query_lens=[1] * args.batch,
                             cached_lens=[args.context - 1] * args.batch, block_size=args.page, backend=reference)
    reference.prepare(meta)  # once per step for every layer: not timed

    def run_reference():
        return reference.forward(q, None, None, cache, cache, meta, scale, kv_stored=True)

    expected = run_reference()[..., :RANK].float()
    gbytes = args.batch * args.context * dim * 2 / 1e9
    result = {"heads": num_heads, "cache_gb": gbytes}
    run_reference()
    result["reference_ms"] = median_cuda_ms(run_reference, args.repeats)
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    tuned = la.tune_latent_decode(num_heads, dim, RANK, args.page, torch.bfloat16, device, args.batch, args.context)
    default = (la.LATENT_DECODE_CONFIGS[0], la.SPLIT_WAVES[0])
    for name, (config, waves) in (("default", default), ("tuned", tuned)):
        splits = la.latent_num_splits(args.batch, la.head_blocks(num_heads, config[0]), num_sms, waves)

        def call(config=config, splits=splits):
            return la.latent_decode(q, cache, tables, context_lens, scale, RANK, splits, *config)

        out = call().float()
        graph = cuda_graph_of(call, 8, device)
        graph.replay()
        eager_ms = median_cuda_ms(call, args.repeats)
        graph_ms = median_cuda_ms(graph.replay, args.repeats) / 8
        result[name] = {"config": list(config), "splits": splits, "eager_ms": eager_ms, "graph_ms": graph_ms,
                        "graph_gb_per_s": gbytes / graph_ms * 1e3, "eager_gb_per_s": gbytes / eager_ms * 1e3,
                        "rel_error_vs_reference": ((out - expected).norm() / expected.norm()).item()}
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("mla_decode: needs a CUDA GPU")
        return 1
    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch,
               "context": args.context, "page": args.page, "results": []}
    for num_heads in (int(h) for h in args.heads.split(",")):
        r = bench_heads(num_heads, args)
        summary["results"].append(r)
        ref_gbs = r["cache_gb"] / r["reference_ms"] * 1e3
        print(f"heads {num_heads:3d}, batch {args.batch}, context {args.context} ({r['cache_gb'] * 1e3:.1f} MB of "
              f"latent cache): reference {r['reference_ms']:.3f} ms ({ref_gbs:.0f} GB/s)")
        for name in ("default", "tuned"):
            k = r[name]
            print(f"    kernel {name:7s} tile {tuple(k['config'])} x {k['splits']} splits: eager "
                  f"{k['eager_ms']:.3f} ms ({k['eager_gb_per_s']:.0f} GB/s), from a graph {k['graph_ms']:.3f} ms "
                  f"({k['graph_gb_per_s']:.0f} GB/s), {r['reference_ms'] / k['graph_ms']:.1f}x the reference; "
                  f"rel. error vs it {k['rel_error_vs_reference']:.1e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
