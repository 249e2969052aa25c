"""MoE routers of one layer: the routing kernels (`temper/engine/kernels/routing.py`, kernel group "routing")
vs their PyTorch references (`deepseek_v3.grouped_topk`, `moe.softmax_topk`) on one GPU.

Workload: the routers of Moonlight-16B-A3B (64 experts, top-6, one group), DeepSeek-V3 (256, top-8, 8 groups
keep 4) and Qwen3-30B-A3B (softmax, 128 experts, top-8, bf16 logits), hidden 2048 (DeepSeek-V3: 7168), random
x and router weights, at each token count of --tokens. Two timings per path: the whole router (the float32
GEMV of `TopkRouter.forward`, or Qwen's bf16 one, then the top-k) and the top-k part alone, each captured in a
CUDA graph of 8 calls (decode replays graphs, so launch gaps count as they do there) and timed with CUDA
events, median of --repeats after a warm-up. "same ids" is the share of tokens whose expert sets equal the
reference's; "max rel" the largest relative difference of their weights.

    python benchmarks/routing_kernel.py --out routing_kernel.json
    python benchmarks/routing_kernel.py --smoke    # CPU, small shapes, the kernels under triton's interpreter
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from kernel_timing import bench_device, sweep, sweep_inputs, time_graph_ms, time_smoke_ms

# (kind, experts, hidden, top-k, groups, groups kept, routed scaling factor)
SHAPES = {
    "moonlight-16b-a3b": ("sigmoid", 64, 2048, 6, 1, 1, 2.446),
    "deepseek-v3": ("sigmoid", 256, 7168, 8, 8, 4, 2.5),
    "qwen3-30b-a3b": ("softmax", 128, 2048, 8, 1, 1, 1.0),
}
SMOKE_SHAPES = {"tiny-sigmoid": ("sigmoid", 16, 32, 4, 4, 2, 2.5), "tiny-softmax": ("softmax", 16, 32, 4, 1, 1, 1.0)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {list(SHAPES)}")
    p.add_argument("--tokens", default="1,16,64,256,2048", help="comma-separated token counts")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--smoke", action="store_true", help="CPU, small shapes, the kernels under triton's interpreter")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def routers(shape: tuple, tokens: int, device: torch.device) -> dict:
    """{path: (whole router, top-k part)} as closures over random inputs of one layer."""
    from temper.engine.kernels import routing
    from temper.engine.models import moe
    from temper.engine.models.deepseek_v3 import grouped_topk

    kind, num_experts, hidden, top_k, groups, kept, scale = shape
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, hidden, generator=g, device=device).bfloat16()
    weight = torch.randn(num_experts, hidden, generator=g, device=device) * hidden**-0.5
    if kind == "softmax":  # Qwen3-MoE: bf16 logits
        weight = weight.bfloat16()
        project = lambda: F.linear(x, weight)  # noqa: E731
        topks = {"reference": lambda logits: moe.softmax_topk(logits, top_k, True),
                 "kernel": lambda logits: routing.softmax_topk(logits, top_k, True)}
    else:  # DeepSeek-V3: float32 GEMV, sigmoid routing
        bias = 0.1 * torch.randn(num_experts, generator=g, device=device)
        project = lambda: F.linear(x.float(), weight)  # noqa: E731
        args = (top_k, groups, kept, True, scale)
        topks = {"reference": lambda logits: grouped_topk(logits, bias, *args),
                 "kernel": lambda logits: routing.sigmoid_topk(logits, bias, *args)}
    logits = project()
    return {name: (lambda topk=topk: topk(project()), lambda topk=topk: topk(logits)) for name, topk in topks.items()}






def agreement(out, ref) -> dict:
    """Share of tokens with the reference's expert set; largest relative weight difference among those."""
    (weights, ids), (ref_weights, ref_ids) = out, ref
    order, ref_order = ids.sort(dim=1)[1], ref_ids.sort(dim=1)[1]
    same = (ids.gather(1, order) == ref_ids.gather(1, ref_order)).all(dim=1)
    w, rw = weights.gather(1, order)[same].double(), ref_weights.gather(1, ref_order)[same].double()
    rel = ((w - rw).abs() / rw.abs().clamp_min(1e-30)).max().item() if same.any() else float("nan")
    return {"same_ids": same.float().mean().item(), "max_rel": rel}


def bench(name: str, shape: tuple, tokens: int, device: torch.device, args) -> dict:
    timer = time_smoke_ms if args.smoke else time_graph_ms
    paths = routers(shape, tokens, device)
    result = {"shape": name, "tokens": tokens, **agreement(paths["kernel"][1](), paths["reference"][1]())}
    for path, (whole, topk) in paths.items():
        result[f"{path}_router_ms"] = timer(whole, device, args.repeats)
        result[f"{path}_topk_ms"] = timer(topk, device, args.repeats)
    return result


def report(r: dict) -> None:
    print(f"{r['shape']} T={r['tokens']:5d}: router {r['reference_router_ms'] * 1e3:.1f} -> "
          f"{r['kernel_router_ms'] * 1e3:.1f} us, top-k part {r['reference_topk_ms'] * 1e3:.1f} -> "
          f"{r['kernel_topk_ms'] * 1e3:.1f} us; same ids {r['same_ids']:.2%}, max rel {r['max_rel']:.1e}")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = bench_device(args.smoke, "routing_kernel")
    if device is None:
        return 1
    shapes, tokens, summary = sweep_inputs(args, device, SHAPES, SMOKE_SHAPES, [1, 5])
    return sweep(summary, shapes, tokens, lambda name, shape, t: bench(name, shape, t, device, args), report,
                 args.out)


if __name__ == "__main__":
    raise SystemExit(main())
