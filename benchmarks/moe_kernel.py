"""MoE experts of one layer: the fused Triton kernels (`temper/engine/kernels/fused_moe.py`, kernel group
"fused_moe") vs the grouped GEMMs (`moe.dispatch_grouped`, ``torch._grouped_mm``, group "moe") on one GPU.

Workload: Qwen3-30B-A3B's routed experts (128 x SwiGLU 2048 -> 768, top-8, bf16 routing weights) and
Moonlight-16B-A3B's (DeepSeek-V3 architecture: 64 x 2048 -> 1408, top-6, float32 routing weights), random
bf16 weights, x and top-k routing over uniform scores, at each token count of --tokens (a decode batch is
1-256 tokens; 2048 a prefill chunk). Each path is captured in a CUDA graph of 8 calls (the engine's decode
replays graphs, so launch gaps count as they do there) and timed with CUDA events, median of --repeats after
a warm-up (`median_cuda_ms`); the fused kernels with the tile `pick_config` takes and with every tile of
`FUSED_MOE_CONFIGS`. Effective bandwidth counts the weights of the experts the routing touches, once each
(decode is bound by streaming them); "of copy" divides it by this GPU's device-to-device copy bandwidth
(measured here: a 1 GiB clone, read + write), the roofline the issue's 0.6 target refers to. The outputs
are compared with the grouped GEMMs' (share of elements not bit-equal; relative error).

    python benchmarks/moe_kernel.py --out moe_kernel.json
    python benchmarks/moe_kernel.py --smoke    # CPU, tiny shapes, the kernels under triton's interpreter
"""

from __future__ import annotations

import argparse

import torch
from kernel_timing import bench_device, copy_gb_per_s, sweep, sweep_inputs, time_graph_ms, time_smoke_ms

# (experts, hidden, expert intermediate size, top-k, routing weights' dtype)
SHAPES = {
    "qwen3-30b-a3b": (128, 2048, 768, 8, torch.bfloat16),
    "moonlight-16b-a3b": (64, 2048, 1408, 6, torch.float32),
}
SMOKE_SHAPES = {"tiny": (8, 64, 48, 2, torch.bfloat16)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {list(SHAPES)}")
    p.add_argument("--tokens", default="1,16,32,64,128,256,2048", help="comma-separated token counts")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, the kernels under triton's interpreter")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def random_layer(shape: tuple, tokens: int, device: torch.device, seed: int = 0):
    """(w_gate_up, w_down, x, weights, ids) of one MoE layer with random bf16 weights and top-k routing."""
    num_experts, hidden, size, top_k, weight_dtype = shape
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*dims, scale=1.0):
        return (scale * torch.randn(*dims, generator=g, device=device)).bfloat16()

    scores = torch.rand(tokens, num_experts, generator=g, device=device)
    weights, ids = scores.topk(top_k, dim=-1)
    w_gate_up = randn(num_experts, 2 * size, hidden, scale=hidden**-0.5)
    w_down = randn(num_experts, hidden, size, scale=size**-0.5)
    return w_gate_up, w_down, randn(tokens, hidden), weights.to(weight_dtype), ids


def touched_gb(shape: tuple, ids: torch.Tensor) -> float:
    """GB of expert weights the routing reads: each touched expert's gate, up and down once."""
    _num_experts, hidden, size, _top_k, _ = shape
    return ids.unique().numel() * 3 * hidden * size * 2 / 1e9




def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    return {"not_bit_equal": (out != ref).float().mean().item(),
            "rel_error": ((out.double() - ref.double()).norm() / ref.double().norm()).item()}


def bench(name: str, shape: tuple, tokens: int, device: torch.device, args) -> dict:
    from temper.engine.kernels import fused_moe
    from temper.engine.models.moe import dispatch_grouped

    layer = random_layer(shape, tokens, device)
    num_experts, _hidden, _size, top_k, _ = shape
    timer = time_smoke_ms if args.smoke else time_graph_ms
    gb = touched_gb(shape, layer[4])
    grouped = dispatch_grouped(*layer)
    result = {"shape": name, "tokens": tokens, "touched_experts": layer[4].unique().numel(), "touched_gb": gb,
              "grouped_ms": timer(lambda: dispatch_grouped(*layer), device, args.repeats),
              "default_config": list(fused_moe.pick_config(tokens, top_k, num_experts)), "configs": []}
    for config in fused_moe.FUSED_MOE_CONFIGS:
        out = fused_moe.fused_experts(*layer, config=config)
        ms = timer(lambda config=config: fused_moe.fused_experts(*layer, config=config), device, args.repeats)
        result["configs"].append({"config": list(config), "ms": ms, **compare(out, grouped)})
    default = next(c for c in result["configs"] if c["config"] == result["default_config"])
    result["fused_ms"] = default["ms"]
    result["best_config"] = min(result["configs"], key=lambda c: c["ms"])["config"]
    return result


def report(r: dict, copy_gbs: float | None) -> None:
    def gbs(ms):
        return r["touched_gb"] / ms * 1e3

    roof = (lambda ms: f", {gbs(ms) / copy_gbs:.2f} of copy") if copy_gbs else (lambda ms: "")
    print(f"{r['shape']} T={r['tokens']:5d} ({r['touched_experts']} experts, {r['touched_gb'] * 1e3:.0f} MB): "
          f"fused {r['fused_ms']:.3f} ms ({gbs(r['fused_ms']):.0f} GB/s{roof(r['fused_ms'])}), "
          f"grouped {r['grouped_ms']:.3f} ms ({gbs(r['grouped_ms']):.0f} GB/s{roof(r['grouped_ms'])}), "
          f"fused/grouped {r['fused_ms'] / r['grouped_ms']:.2f}")
    for c in r["configs"]:
        mark = "*" if c["config"] == r["default_config"] else " "
        print(f"    {mark} tile {tuple(c['config'])}: {c['ms']:.3f} ms ({gbs(c['ms']):.0f} GB/s{roof(c['ms'])}), "
              f"{c['not_bit_equal']:.2%} of elements not bit-equal to grouped, rel. error {c['rel_error']:.1e}")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = bench_device(args.smoke, "moe_kernel")
    if device is None:
        return 1
    shapes, tokens, summary = sweep_inputs(args, device, SHAPES, SMOKE_SHAPES, [1, 16])
    copy_gbs = summary["copy_gb_per_s"] = copy_gb_per_s(device, args.repeats) if device.type == "cuda" else None
    if copy_gbs:
        print(f"{summary['device']}: device-to-device copy {copy_gbs:.0f} GB/s")
    return sweep(summary, shapes, tokens, lambda name, shape, t: bench(name, shape, t, device, args),
                 lambda r: report(r, copy_gbs), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
