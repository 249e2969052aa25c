"""Where a GRPO rollout's time goes between the engine and its HTTP server (issue 13).

One engine, the rollout of issue 13's end-to-end workload (8 prompts × 8 samples, prompts of exactly
`--prompt-len` tokens, `--response-len` new tokens each, temperature 1.0, ignore_eos, log-probs), run
three ways in one process, each `--repeats` times with the prefix cache flushed before each:

  offline  `LLMEngine.generate` (one loop, only finished requests reported): the engine's own time
  shuffled the same with the requests added in a random order (a group's samples no longer side by side
           in the batch, as when they arrive over HTTP in any order)
  stream   the same requests stepped as the server steps them (`engine.step()`: every request gets an
           output with its text each step), without HTTP
  server   the engine behind its HTTP server (`ServerThread`, as a colocated `train.py` runs it) with 64
           concurrent non-streaming `/generate` requests, one per sample, `return_logprob` on, as temper's
           rollout sends them

For each (median run): seconds, engine steps (prefill and decode), the time until the last request was
admitted, and ms a step once all run together. The differences are the costs of per-step outputs and of
the HTTP path.

    python benchmarks/rollout_server.py                                   # GPU, Qwen3-0.6B shape
    python benchmarks/rollout_server.py --model tiny --prompt-len 64 --response-len 64 --device cpu
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rl_workload  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen3-0.6b", choices=sorted(rl_workload.shapes()))
    p.add_argument("--device", default="auto")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="offline,shuffled,stream,server")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    return p.parse_args(argv)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepLog:
    """Every launched step of the engine: (perf_counter time, batch size, prefill or not)."""

    def __init__(self, engine):
        self.steps: list[tuple[float, int, bool]] = []
        launched = engine.scheduler.launched

        def record(batch):
            self.steps.append((time.perf_counter(), len(batch.seqs), batch.is_prefill))
            return launched(batch)

        engine.scheduler.launched = record

    def summary(self, requests: int, origin: float) -> dict:
        """Steps, prefill steps, the first step and the last admission in seconds after `origin` (when
        the run started), and ms a step while all `requests` ran together."""
        prefill = [t for t, _, is_prefill in self.steps if is_prefill]
        full = [t for t, size, is_prefill in self.steps if not is_prefill and size == requests]
        per_step = 1000 * (full[-1] - full[0]) / (len(full) - 1) if len(full) > 1 else None
        return {"steps": len(self.steps), "prefill_steps": len(prefill),
                "first_step_s": self.steps[0][0] - origin if self.steps else None,
                "last_admitted_s": prefill[-1] - origin if prefill else None, "full_batch_steps": len(full),
                "full_batch_ms_per_step": per_step}


def run_offline(engine, prompts, params, stream: bool) -> dict:
    engine.flush_cache()
    for prompt in prompts:
        engine.add_request(prompt, params)
    _sync(engine.model_runner.device)
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        engine._step(stream=stream)
    _sync(engine.model_runner.device)
    return {"seconds": time.perf_counter() - start}


async def _server_once(url: str, prompts, sampling: dict) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(600.0), trust_env=False) as client:
        await client.post("/flush_cache")
        start = time.perf_counter()
        body = [{"input_ids": p, "sampling_params": sampling, "return_logprob": True} for p in prompts]
        responses = await asyncio.gather(*(client.post("/generate", json=b) for b in body))
        seconds = time.perf_counter() - start
    outs = [r.json() for r in responses]
    for r in responses:
        r.raise_for_status()
    tokens = sum(len(o["output_ids"]) for o in outs)
    return {"seconds": seconds, "output_tokens": tokens, "sent_at": start}


def run_server(engine, url: str, prompts, sampling: dict) -> dict:
    before = engine.stats()["generated_tokens"]
    result = asyncio.run(_server_once(url, prompts, sampling))
    result["engine_tokens"] = engine.stats()["generated_tokens"] - before
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    from temper.engine import EngineArgs, LLMEngine, SamplingParams
    from temper.engine.server import ServerArgs, ServerThread

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="temper-rollout-server-"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, prompt_file = rl_workload.prepare(work, args.model, args.prompt_len, args.prompts, dtype)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = rl_workload.read_prompts(prompt_file)[: args.prompts]
    unique = [rl_workload.prompt_tokens(tokenizer, row) for row in rows]
    prompts = [p for p in unique for _ in range(args.n)]
    max_len = args.prompt_len + args.response_len + 64
    engine = LLMEngine(EngineArgs(model=str(model), device=str(device), max_model_len=max_len, seed=0))
    params = SamplingParams(temperature=1.0, max_new_tokens=args.response_len, ignore_eos=True)
    engine.generate(prompts[:3], SamplingParams(temperature=1.0, max_new_tokens=16, ignore_eos=True))  # warm
    log = StepLog(engine)
    modes = args.modes.split(",")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    server = None
    if "server" in modes:
        server = ServerThread(ServerArgs(model=str(model), port=0, log_level="warning"), engine=engine).start()
    sampling = {"temperature": 1.0, "max_new_tokens": args.response_len, "ignore_eos": True}
    try:
        for _ in range(args.repeats + 1):  # the first round warms every path up and is dropped
            for mode in modes:
                log.steps.clear()
                origin = time.perf_counter()
                if mode == "server":
                    r = run_server(engine, server.url, prompts, sampling)
                    origin = r.pop("sent_at")  # step times from the first request sent, not from the flush
                elif mode == "shuffled":
                    r = run_offline(engine, random.Random(len(results[mode])).sample(prompts, len(prompts)), params, False)
                else:
                    r = run_offline(engine, prompts, params, stream=mode == "stream")
                results[mode].append({**r, **log.summary(len(prompts), origin)})
    finally:
        if server is not None:
            server.stop()
    tokens = len(prompts) * args.response_len
    summary = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "model": args.model, "requests": len(prompts), "prompt_len": args.prompt_len,
               "response_len": args.response_len, "modes": {}}
    for mode, runs in results.items():
        runs = runs[1:] or runs
        median = sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]
        seconds = median["seconds"]
        row = {**median, "tok_s": tokens / seconds, "runs_s": [round(r["seconds"], 4) for r in runs]}
        summary["modes"][mode] = row
        per_step = median["full_batch_ms_per_step"]
        print(f"{mode:8s} {seconds:7.3f} s  {tokens / seconds:9.0f} tok/s  steps {median['steps']} "
              f"(prefill {median['prefill_steps']}, first at {1000 * (median['first_step_s'] or 0):.0f} ms, last admitted "
              f"at {1000 * (median['last_admitted_s'] or 0):.0f} ms)  full batch {median['full_batch_steps']} steps at "
              f"{per_step or 0:.2f} ms  runs {row['runs_s']}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
