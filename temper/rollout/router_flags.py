"""sglang-router's ``--router-*`` flags that temper's router takes (light: the config rules import it).

``--router-NAME VALUE`` lands in ``cfg.engine.router["NAME"]``; `router_settings` maps the ones temper's
`Router` has to its argument names and lists the rest, which the rollout manager names in one warning.
With --use-fault-tolerance the router is fault tolerant and its health checks follow the
--rollout-health-check-* flags (over --router-health-check-*). Engines that require an API key
(`engine_api_key`) get it from the router on every call.
"""

from __future__ import annotations

from typing import Any

# sglang-router's flags (``--router-NAME`` lands in cfg.engine.router["NAME"]) that temper's router takes,
# as its own argument names; every other --router-* flag is not used by temper's router (`router_settings`).
ROUTER_ARG_OF = {
    "health_check_interval_secs": "health_check_interval",
    "health_check_timeout_secs": "health_check_timeout",
    "worker_startup_timeout_secs": "worker_startup_timeout",
    "request_timeout_secs": "request_timeout",
    "max_concurrent_requests": "max_connections",
}


def engine_api_key(args: Any) -> str | None:
    """The key the run's engines require (``Authorization: Bearer KEY``): SGLang's ``--api-key`` given as
    --sglang-api-key, or the random per-run key temper gives engines that listen beyond loopback (engines on
    several nodes: `temper.cluster.engine_group.give_engines_a_key`); None when they require none. The router,
    the weight sync and the driver's calls send it; a custom generate function that calls engines directly
    (not through the router) sends it too."""
    engine = getattr(args, "engine", None)
    key = (getattr(engine, "sglang", None) or {}).get("api_key")
    return None if key is None else str(key)  # the flag's value is parsed as YAML: a number is a key too


def router_settings(args: Any) -> tuple[dict[str, Any], list[str]]:
    """(`Router` arguments from the run's --router-* flags, the flags temper's router does not use)."""
    given = dict(getattr(getattr(args, "engine", None), "router", None) or {})
    settings = {ROUTER_ARG_OF[name]: value for name, value in given.items() if name in ROUTER_ARG_OF}
    ignored = ["--router-" + name.replace("_", "-") for name in given if name not in ROUTER_ARG_OF]
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            flag = next(f for f, arg in ROUTER_ARG_OF.items() if arg == name)
            raise ValueError(f"--router-{flag.replace('_', '-')} must be a positive number, got {value!r}")
    if "max_connections" in settings:
        settings["max_connections"] = int(settings["max_connections"])
    if getattr(args, "use_fault_tolerance", False):  # the engines' health checks are fault tolerance's
        settings |= {"fault_tolerant": True, "health_check_interval": args.rollout_health_check_interval,
                     "health_check_timeout": args.rollout_health_check_timeout,
                     "health_check_first_wait": args.rollout_health_check_first_wait}
    if (key := engine_api_key(args)) is not None:
        settings["worker_api_key"] = key
    return settings, ignored
