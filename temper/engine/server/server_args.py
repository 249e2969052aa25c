"""`ServerArgs`: the settings of one engine server, and the ``temper serve`` flags that fill them.

Flag names follow SGLang's ``launch_server`` (``--max-running-requests``, ``--chunked-prefill-size``,
``--disable-radix-cache``, ``--random-seed``, ...) so that ``--sglang-*`` pass-through values map 1:1;
`engine_args` translates them to the engine's `EngineArgs` names.
"""

from __future__ import annotations

import argparse
import dataclasses

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclasses.dataclass
class ServerArgs:
    """One server. ``None`` engine fields keep the engine's own defaults."""

    model: str
    host: str = "127.0.0.1"
    port: int = 30000
    served_model_name: str | None = None  # defaults to `model`
    dtype: str = "auto"
    device: str = "auto"
    load_format: str = "auto"  # "dummy": random weights, no *.safetensors needed (EngineArgs.load_format)
    moe_router_dtype: str | None = None  # "float32": Qwen-MoE routers in float32 (EngineArgs.moe_router_dtype)
    moe_kernel: str | None = None  # "grouped_mm": torch._grouped_mm's experts, not Triton's (EngineArgs.moe_kernel)
    max_model_len: int | None = None  # SGLang's --context-length
    num_kv_blocks: int | None = None
    mem_fraction_static: float | None = None
    max_running_requests: int | None = None
    chunked_prefill_size: int | None = None
    disable_radix_cache: bool = False
    random_seed: int | None = None
    tp_size: int = 1  # tensor-parallel ranks (SGLang's --tp-size)
    disable_custom_all_reduce: bool = False  # tensor-parallel all-reduces through NCCL, not symmetric memory
    log_level: str = "info"
    skip_server_warmup: bool = False
    health_check_timeout: float = 20.0  # seconds a /health probe may wait for engine output
    api_key: str | None = None
    max_request_bytes: int = 64 * 2**20  # request bodies larger than this get a 413
    max_n: int = 1024  # most samples (`n`) one prompt may ask for
    max_client_requests: int = 4096  # most generation requests in flight from one client address (429 beyond)
    held_request_timeout: float = 1800.0  # seconds a request waits while the engine is paused or released (503)
    # An idle engine's first step waits until no request arrived for burst_wait_ms (at most burst_max_wait_ms):
    # a rollout's batch, which arrives over tens of milliseconds, is then prefilled together (async_engine.py).
    burst_wait_ms: float = 10.0
    burst_max_wait_ms: float = 200.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        self.log_level = _log_level(str(self.log_level))  # any case: slime's scripts write INFO
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if isinstance(self.tp_size, bool) or not isinstance(self.tp_size, int) or self.tp_size < 1:
            raise ValueError(f"tp_size must be a positive integer, got {self.tp_size!r}")
        if self.mem_fraction_static is not None and not 0 < self.mem_fraction_static <= 1:
            raise ValueError(f"mem_fraction_static must be in (0, 1], got {self.mem_fraction_static}")
        for name in ("max_request_bytes", "max_n", "max_client_requests"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (self.burst_wait_ms >= 0 and self.burst_max_wait_ms >= 0):
            raise ValueError(f"burst_wait_ms and burst_max_wait_ms must be >= 0, got {self.burst_wait_ms}, "
                             f"{self.burst_max_wait_ms}")
        if not self.held_request_timeout > 0:
            raise ValueError(f"held_request_timeout must be positive seconds, got {self.held_request_timeout}")

    @property
    def control_open(self) -> bool:
        """Whether the weight, memory and control routes answer without an API key (loopback only: beyond it
        anyone who reaches the port could replace the weights; a run's engines on other nodes get a key)."""
        return self.loopback_only

    @property
    def loopback_only(self) -> bool:
        """Whether the server listens on the loopback interface only."""
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    def engine_args(self):
        """The `EngineArgs` for this server."""
        from temper.engine import EngineArgs

        mapped = {
            "dtype": self.dtype, "device": self.device, "max_model_len": self.max_model_len,
            "num_kv_blocks": self.num_kv_blocks, "mem_fraction_static": self.mem_fraction_static,
            "max_num_seqs": self.max_running_requests, "max_num_batched_tokens": self.chunked_prefill_size,
            "seed": self.random_seed, "tensor_parallel_size": self.tp_size, "load_format": self.load_format,
            "moe_router_dtype": self.moe_router_dtype, "moe_kernel": self.moe_kernel,
        }
        if self.disable_custom_all_reduce:
            mapped["symmetric_memory"] = False
        kwargs = {k: v for k, v in mapped.items() if v is not None}
        return EngineArgs(model=self.model, enable_prefix_caching=not self.disable_radix_cache, **kwargs)


def _log_level(value: str) -> str:
    return {"warn": "warning"}.get(value.lower(), value.lower())


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``temper serve`` / ``python -m temper.engine.server`` flags."""
    a = parser.add_argument
    a("--model", "--model-path", dest="model", required=True, metavar="DIR", help="Hugging Face checkpoint folder")
    a("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    a("--port", type=int, default=30000, help="port to bind (0 = any free port)")
    a("--served-model-name", default=None, help="model name reported by the API (default: --model)")
    a("--dtype", default="auto", help="weight/compute dtype: auto, float32, bfloat16, float16")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    a("--load-format", default="auto", choices=("auto", "dummy"),
      help="auto: the checkpoint's *.safetensors; dummy: random weights (the folder needs only config.json and the "
           "tokenizer), for benchmarks")
    a("--moe-router-dtype", default=None, choices=("float32",),
      help="compute Qwen-MoE routers in float32 (the trainer's --moe-router-dtype fp32); default: as Hugging Face")
    a("--moe-kernel", default=None, choices=("auto", "grouped_mm"),
      help="an MoE model's routed experts: auto (the fused Triton kernels where they pass their start-up check, "
           "else torch._grouped_mm); grouped_mm (torch._grouped_mm always, for an A/B)")
    a("--max-model-len", "--context-length", dest="max_model_len", type=int, default=None, help="context length in tokens")
    a("--num-kv-blocks", type=int, default=None, help="KV-cache blocks (default: sized from --mem-fraction-static)")
    a("--mem-fraction-static", type=float, default=None, help="share of device memory for weights + KV cache")
    a("--max-running-requests", type=int, default=None, help="most requests decoded together")
    a("--chunked-prefill-size", type=int, default=None, help="most tokens per engine step")
    a("--disable-radix-cache", action="store_true", help="turn the prefix cache off")
    a("--random-seed", type=int, default=None, help="engine sampling seed")
    a("--tp-size", "--tensor-parallel-size", dest="tp_size", type=int, default=1,
      help="split the model over this many GPUs (CPU: worker processes); rank r uses --device's index + r")
    a("--disable-custom-all-reduce", action="store_true",
      help="tensor-parallel all-reduces through NCCL instead of symmetric memory (EngineArgs.symmetric_memory)")
    a("--log-level", default="info", type=_log_level, choices=LOG_LEVELS, help="any case")
    a("--skip-server-warmup", action="store_true", help="mark the server ready without a warmup generation")
    a("--api-key", default=None,
      help="require 'Authorization: Bearer KEY' on every route but /health and /ping; without it, a server that "
           "listens beyond loopback refuses the weight, memory and control routes")
    a("--max-request-bytes", type=int, default=64 * 2**20, help="largest request body (413 beyond)")
    a("--max-n", type=int, default=1024, help="most samples (n) per prompt (400 beyond)")
    a("--max-client-requests", type=int, default=4096,
      help="most generation requests in flight from one client address (429 beyond)")
    a("--held-request-timeout", type=float, default=1800.0,
      help="seconds a request may wait while the engine is paused or its memory released (then 503)")
    a("--burst-wait-ms", type=float, default=10.0,
      help="an idle engine that gets a request waits until none has arrived for this long before its first step, "
           "so that a batch sent at once is prefilled together (0: step at once)")
    a("--burst-max-wait-ms", type=float, default=200.0, help="the longest --burst-wait-ms may hold the first step")
    return parser


def server_args_from(namespace: argparse.Namespace) -> ServerArgs:
    """`ServerArgs` from parsed `add_serve_arguments` flags (extra attributes are ignored)."""
    names = {f.name for f in dataclasses.fields(ServerArgs)}
    return ServerArgs(**{k: v for k, v in vars(namespace).items() if k in names})
