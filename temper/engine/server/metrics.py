"""Load and metrics reports: ``/v1/loads`` (SGLang's JSON or Prometheus gauges) and ``/metrics``.

Gauges come from the engine loop's stats snapshot (`AsyncEngine.stats`, refreshed after every step
and command, so reading them never waits for the engine); counters and the latency histogram are
updated by the HTTP side when a request finishes. The Prometheus text is written by hand (exposition
format 0.0.4) with SGLang's ``sglang:`` metric names.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from temper.engine.server.protocol import RequestError

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, float("inf"))
LOAD_SECTIONS = ("core", "memory", "spec", "lora", "disagg", "queues", "all")


class ServerMetrics:
    """Counters of finished requests and a throughput estimate; updated on the event loop only."""

    def __init__(self) -> None:
        self.requests_total = 0
        self.finished_by_reason: dict[str, int] = {}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.cached_tokens_total = 0
        self.latency_counts = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self.gen_throughput = 0.0

    def observe_finished(self, out: Any, latency: float) -> None:
        """Count one finished engine request."""
        self.requests_total += 1
        reason = out.finish_reason or "unknown"
        self.finished_by_reason[reason] = self.finished_by_reason.get(reason, 0) + 1
        self.prompt_tokens_total += len(out.prompt_token_ids)
        self.generation_tokens_total += len(out.output_token_ids)
        self.cached_tokens_total += out.cached_tokens
        self.latency_sum += latency
        for i, bound in enumerate(LATENCY_BUCKETS):
            if latency <= bound:
                self.latency_counts[i] += 1

    def throughput(self, generated_tokens: int) -> float:
        """Generated tokens per second since the previous reading at least a second ago."""
        now = time.monotonic()
        t0, g0 = self._rate_mark
        if now - t0 >= 1.0:
            self.gen_throughput = max(generated_tokens - g0, 0) / (now - t0)
            self._rate_mark = (now, generated_tokens)
        return self.gen_throughput


def core_load(stats: dict[str, Any], block_size: int, max_running: int, metrics: ServerMetrics) -> dict[str, Any]:
    """SGLang's flat ``include=core`` fields for one DP rank, from an engine stats snapshot."""
    total = int(stats.get("kv_blocks_total", 0)) * block_size
    used = int(stats.get("kv_blocks_used", 0)) * block_size
    prefill = int(stats.get("prefill_tokens_computed", 0))
    cached = int(stats.get("cached_tokens", 0))
    usage = used / total if total else 0.0
    return {
        "timestamp": _iso_now(), "dp_rank": 0,
        "num_running_reqs": int(stats.get("num_running", 0)),
        "num_waiting_reqs": int(stats.get("num_waiting", 0)) + int(stats.get("num_held", 0)),
        "num_waiting_uncached_tokens": 0, "num_used_tokens": used, "num_total_tokens": used,
        "num_active_tokens": used, "num_prealloc_ready_tokens": 0, "max_total_num_tokens": total,
        "max_running_requests": max_running, "token_usage": usage,
        "gen_throughput": metrics.throughput(int(stats.get("generated_tokens", 0))),
        "cache_hit_rate": cached / (cached + prefill) if cached + prefill else 0.0,
        "utilization": usage, "total_prefill_uncached_tokens": prefill, "total_prefill_busy_us": 0,
        "decode_moments": {},
        # temper's own counters (cumulative): engine steps by kind and the loop's time inside them
        "num_prefill_steps": int(stats.get("prefill_steps", 0)), "num_decode_steps": int(stats.get("decode_steps", 0)),
        "step_busy_s": float(stats.get("step_seconds", 0.0)), "num_preemptions": int(stats.get("num_preemptions", 0)),
        # busy periods: idle-to-stepping transitions, and (Unix seconds) the last one's first step and the
        # last time the engine ran out of work
        "num_generated_tokens": int(stats.get("generated_tokens", 0)),
        "num_finished_reqs": int(stats.get("finished_requests", 0)),
        "num_busy_periods": int(stats.get("busy_periods", 0)), "busy_since": float(stats.get("busy_since", 0.0)),
        "idle_since": float(stats.get("idle_since", 0.0)),
    }


def parse_include(include: str | None) -> set[str]:
    """The ``include`` query of ``/v1/loads`` (comma-separated; default and "all" mean every section)."""
    parts = {p.strip() for p in (include or "all").split(",") if p.strip()}
    unknown = sorted(parts - set(LOAD_SECTIONS))
    if unknown:
        raise RequestError(f"include: unknown section(s) {unknown}; expected some of {list(LOAD_SECTIONS)}")
    return set(LOAD_SECTIONS) if "all" in parts else parts


def load_entry(core: dict[str, Any], stats: dict[str, Any], sections: set[str]) -> dict[str, Any]:
    """One ``loads[]`` entry: the core fields plus the requested sections (temper has no spec/lora/PD)."""
    entry = dict(core)
    if "memory" in sections:
        entry["memory"] = {"weight_gb": None, "kv_cache_gb": None, "graph_gb": 0.0,
                           "token_capacity": core["max_total_num_tokens"]}
    if "spec" in sections:
        entry["speculative"] = None
    if "lora" in sections:
        entry["lora"] = None
    if "disagg" in sections:
        entry["disaggregation"] = {"mode": "null"}
    if "queues" in sections:
        entry["queues"] = {"waiting": int(stats.get("num_waiting", 0)), "grammar": 0,
                           "paused": int(stats.get("num_held", 0)), "retracted": 0, "prealloc_ready": 0}
    return entry


def loads_prometheus(core: dict[str, Any]) -> str:
    """``format=prometheus`` of ``/v1/loads``: one ``sglang_<field>{dp_rank="0"}`` gauge per number."""
    lines = []
    for key, value in core.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "dp_rank":
            lines += [f"# TYPE sglang_{key} gauge", f'sglang_{key}{{dp_rank="0"}} {_num(value)}']
    return "\n".join(lines) + "\n"


def prometheus_text(core: dict[str, Any], metrics: ServerMetrics, model_name: str, weight_version: str) -> str:
    """The ``/metrics`` page."""
    label = f'model_name="{_escape(model_name)}"'
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        out.extend(f"{name}{{{labels}}} {_num(v)}" for labels, v in samples)

    for key, help_text in (("num_running_reqs", "Running requests."), ("num_used_tokens", "KV-cache tokens in use."),
                           ("token_usage", "Fraction of the KV cache in use."), ("gen_throughput", "Generated tokens per second."),
                           ("cache_hit_rate", "Prefix-cache hit rate over prompt tokens."),
                           ("max_total_num_tokens", "KV-cache capacity in tokens.")):
        metric(f"sglang:{key}", "gauge", help_text, [(label, core[key])])
    metric("sglang:num_queue_reqs", "gauge", "Waiting requests.", [(label, core["num_waiting_reqs"])])
    metric("sglang:prompt_tokens_total", "counter", "Prompt tokens of finished requests.", [(label, metrics.prompt_tokens_total)])
    metric("sglang:generation_tokens_total", "counter", "Generated tokens of finished requests.", [(label, metrics.generation_tokens_total)])
    metric("sglang:cached_tokens_total", "counter", "Prompt tokens served from the prefix cache.", [(label, metrics.cached_tokens_total)])
    metric("sglang:num_requests_total", "counter", "Finished requests.", [(label, metrics.requests_total)])
    metric("sglang:num_finished_requests_total", "counter", "Finished requests by finish reason.",
           [(f'{label},finish_reason="{r}"', c) for r, c in sorted(metrics.finished_by_reason.items())])
    buckets = [(f'{label},le="{"+Inf" if b == float("inf") else b}"', c) for b, c in zip(LATENCY_BUCKETS, metrics.latency_counts)]
    metric("sglang:e2e_request_latency_seconds", "histogram", "End-to-end request latency.", [])
    out.extend(f"sglang:e2e_request_latency_seconds_bucket{{{lb}}} {c}" for lb, c in buckets)
    out.append(f"sglang:e2e_request_latency_seconds_sum{{{label}}} {_num(metrics.latency_sum)}")
    out.append(f"sglang:e2e_request_latency_seconds_count{{{label}}} {metrics.requests_total}")
    metric("temper:weight_version_info", "gauge", "Current weight version (label).",
           [(f'{label},weight_version="{_escape(weight_version)}"', 1)])
    return "\n".join(out) + "\n"


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()
