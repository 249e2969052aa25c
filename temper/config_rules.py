"""Cross-field rules of the configuration, checked before any process starts.

Each rule either fills a derived value (slime's defaults) or raises `ConfigError` with one line that
says what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from temper.config import ClusterConfig, ConfigError
from temper.eval_config import load_eval_config
from temper.model_shape_moe import check_layer_freq

if TYPE_CHECKING:
    from temper.config import Config

# Estimators whose rewards are normalized within the group (mean, and std unless disabled).
GROUP_NORMALIZED = {"grpo", "gspo", "cispo", "rloo", "reinforce_plus_plus_baseline"}


def validate(cfg: Config) -> None:
    for rule in (
        _modes, _batch_sizes, _gpus, _parallelism, _trainer_options, _algorithm, _moe, _sampling, _data,
        _fault_tolerance, _checkpoint, _eval, _router, _preflight,
    ):  # fmt: skip
        rule(cfg)


def _modes(cfg: Config) -> None:
    if cfg.load_debug_rollout_data:
        cfg.debug_train_only = True
    if cfg.debug_rollout_only and cfg.debug_train_only:
        raise ConfigError("--debug-rollout-only and --debug-train-only exclude each other; pick one")
    needs_engines = cfg.rollout_function_path in DEFAULT_ROLLOUT_FUNCTIONS
    if cfg.debug_train_only and not cfg.load_debug_rollout_data and needs_engines:
        raise ConfigError(
            "--debug-train-only starts no engines, so rollouts must come from --load-debug-rollout-data "
            "PATH_{rollout_id}.pt or a rollout function that needs none (--rollout-function-path, e.g. "
            "temper.rollout.sft_rollout.generate_rollout)"
        )
    if cfg.train_backend == "megatron":
        raise ConfigError("--train-backend megatron is not available in this build; use --train-backend fsdp")


def _batch_sizes(cfg: Config) -> None:
    """rollout_batch_size x n_samples_per_prompt = global_batch_size x num_steps_per_rollout."""
    rbs, n = cfg.rollout_batch_size, cfg.n_samples_per_prompt
    if rbs is None:
        raise ConfigError("--rollout-batch-size is required (prompts per rollout step)")
    if rbs <= 0 or n <= 0:
        raise ConfigError(f"--rollout-batch-size ({rbs}) and --n-samples-per-prompt ({n}) must be positive")
    for name in ("global_batch_size", "num_steps_per_rollout", "micro_batch_size"):
        if (value := getattr(cfg, name)) is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if cfg.num_rollout is not None and cfg.num_rollout < 0:
        raise ConfigError(f"--num-rollout must be >= 0 (rollout steps to run), got {cfg.num_rollout}")
    samples = rbs * n
    gbs, steps = cfg.global_batch_size, cfg.num_steps_per_rollout
    if gbs is None and steps is None:
        steps = 1
    if gbs is None:
        if samples % steps:
            raise ConfigError(
                f"--rollout-batch-size {rbs} x --n-samples-per-prompt {n} = {samples} samples do not split into "
                f"--num-steps-per-rollout {steps} equal optimizer steps; change one of them"
            )
        gbs = samples // steps
    elif steps is None:
        if gbs <= 0 or samples % gbs:
            raise ConfigError(
                f"--rollout-batch-size {rbs} x --n-samples-per-prompt {n} = {samples} samples is not a multiple of "
                f"--global-batch-size {gbs}; make it divide {samples} or set --num-steps-per-rollout"
            )
        steps = samples // gbs
    elif gbs * steps != samples:
        raise ConfigError(
            f"--rollout-batch-size {rbs} x --n-samples-per-prompt {n} = {samples} but --global-batch-size {gbs} x "
            f"--num-steps-per-rollout {steps} = {gbs * steps}; they must be equal (drop one of the last two "
            f"and it is derived)"
        )
    cfg.global_batch_size, cfg.num_steps_per_rollout = gbs, steps
    if cfg.use_dynamic_batch_size and not cfg.max_tokens_per_gpu:
        raise ConfigError("--use-dynamic-batch-size needs --max-tokens-per-gpu (token budget per micro-batch)")
    if not cfg.use_dynamic_batch_size and gbs % cfg.micro_batch_size:
        raise ConfigError(
            f"--global-batch-size {gbs} is not a multiple of --micro-batch-size {cfg.micro_batch_size}; "
            f"change one or use --use-dynamic-batch-size"
        )
    if cfg.over_sampling_batch_size is None:
        cfg.over_sampling_batch_size = rbs
    if cfg.num_rollout is None and cfg.num_epoch is None and not cfg.debug_rollout_only:
        raise ConfigError("give --num-rollout (rollout steps) or --num-epoch (passes over --prompt-data)")


def _gpus(cfg: Config) -> None:
    if cfg.offload:
        cfg.offload_train = cfg.offload_rollout = True
    for name in ("actor_num_nodes", "num_gpus_per_node", "rollout_num_gpus_per_engine"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.actor_num_gpus_per_node < 0:
        raise ConfigError(f"--actor-num-gpus-per-node must be >= 0, got {cfg.actor_num_gpus_per_node}")
    if cfg.actor_num_gpus_per_node > cfg.num_gpus_per_node:
        raise ConfigError(
            f"--actor-num-gpus-per-node {cfg.actor_num_gpus_per_node} exceeds --num-gpus-per-node "
            f"{cfg.num_gpus_per_node}; use more --actor-num-nodes or raise --num-gpus-per-node"
        )
    if cfg.colocate:
        if cfg.rollout_num_gpus is None:
            cfg.rollout_num_gpus = cfg.actor_num_gpus
        if cfg.rollout_num_gpus != cfg.actor_num_gpus:
            raise ConfigError(
                f"--colocate shares GPUs, so --rollout-num-gpus ({cfg.rollout_num_gpus}) must equal the actor's "
                f"{cfg.actor_num_gpus} GPUs; drop --rollout-num-gpus"
            )
        # an offload flag not given stays None: the memory plan decides at start (cluster/memory_plan.py)
    else:
        cfg.offload_train, cfg.offload_rollout = bool(cfg.offload_train), bool(cfg.offload_rollout)
    engine_gpus = cfg.rollout_num_gpus or 0
    if engine_gpus % cfg.rollout_num_gpus_per_engine:
        raise ConfigError(
            f"--rollout-num-gpus {engine_gpus} is not a multiple of --rollout-num-gpus-per-engine "
            f"{cfg.rollout_num_gpus_per_engine}"
        )


def _parallelism(cfg: Config) -> None:
    megatron_only = {
        "tensor_model_parallel_size": 1,
        "pipeline_model_parallel_size": 1,
        "context_parallel_size": 1,
        "expert_model_parallel_size": 1,
        "sequence_parallel": False,
    }
    for name, neutral in megatron_only.items():
        if getattr(cfg, name) != neutral:
            raise ConfigError(
                f"--{name.replace('_', '-')} is honoured by the Megatron backend only; with --train-backend fsdp "
                f"leave it at {neutral} (FSDP shards over all actor GPUs)"
            )
    if cfg.recompute_granularity is not None:
        cfg.recompute_activations = True


def _trainer_options(cfg: Config) -> None:
    """Megatron's recompute and optimizer options, as far as temper's FSDP trainer has them: it recomputes
    every decoder layer (one checkpoint per layer) and keeps AdamW's master weights and state in fp32."""
    if cfg.use_precision_aware_optimizer:
        raise ConfigError(
            "--use-precision-aware-optimizer is not supported by temper's FSDP trainer: AdamW's master weights and "
            "state stay fp32 (use --optimizer-cpu-offload to take the state off the GPU); drop it"
        )
    if cfg.attention_backend in ("fused", "unfused", "local"):
        raise ConfigError(
            f"--attention-backend {cfg.attention_backend} is not supported by temper's FSDP trainer, which runs "
            "Flash Attention over packed rows on GPU; use --attention-backend flash (or auto) or drop it"
        )
    method, layers = cfg.recompute_method, cfg.recompute_num_layers
    if (method is not None or layers is not None) and cfg.recompute_granularity != "full":
        raise ConfigError(
            "--recompute-method and --recompute-num-layers apply to --recompute-granularity full (as in Megatron); "
            "add it or drop them"
        )
    if layers is not None and layers < 1:
        raise ConfigError(f"--recompute-num-layers must be >= 1, got {layers}")
    if method == "block" and not (layers is not None and cfg.num_layers is not None and layers >= cfg.num_layers):
        raise ConfigError(
            f"--recompute-method block --recompute-num-layers {layers} (recompute only the first layers) is not "
            "supported by temper's FSDP trainer, which recomputes every decoder layer; use --recompute-method uniform"
        )


def _algorithm(cfg: Config) -> None:
    if cfg.eps_clip_high is None:
        cfg.eps_clip_high = cfg.eps_clip
    if cfg.eps_clip_c is not None and cfg.eps_clip_c <= 1.0:
        raise ConfigError(f"--eps-clip-c is the dual-clip constant and must be > 1, got {cfg.eps_clip_c}")
    if cfg.use_kl_loss and cfg.kl_coef != 0 and cfg.kl_loss_coef != 0:
        raise ConfigError("--kl-coef (KL in the reward) and --use-kl-loss --kl-loss-coef (KL in the loss) exclude each other")
    if cfg.use_rollout_logprobs and cfg.use_tis:
        raise ConfigError("--use-tis corrects towards the engine's log-probs; it cannot be combined with --use-rollout-logprobs")
    if cfg.advantage_estimator in ("reinforce_plus_plus", "reinforce_plus_plus_baseline") and not cfg.normalize_advantages:
        raise ConfigError(f"--advantage-estimator {cfg.advantage_estimator} requires --normalize-advantages")
    if cfg.n_samples_per_prompt == 1 and cfg.advantage_estimator in GROUP_NORMALIZED:
        cfg.disable_grpo_std_normalization = True
    if cfg.advantage_estimator == "rloo" and cfg.n_samples_per_prompt < 2:
        raise ConfigError("--advantage-estimator rloo needs --n-samples-per-prompt >= 2 (leave-one-out baseline)")
    if cfg.ppo_mask_tool_tokens and cfg.advantage_estimator != "ppo":
        raise ConfigError("--ppo-mask-tool-tokens changes PPO's token rewards; it needs --advantage-estimator ppo")
    if cfg.loss_type == "custom_loss" and not cfg.custom_loss_function_path:
        raise ConfigError("--loss-type custom_loss needs --custom-loss-function-path")
    if cfg.custom_loss_function_path and cfg.loss_type != "custom_loss":
        raise ConfigError("--custom-loss-function-path is the loss of --loss-type custom_loss (as in slime); add it")
    if cfg.custom_tis_function_path and not cfg.use_tis:
        raise ConfigError("--custom-tis-function-path is applied with --use-tis (as in slime); add --use-tis")
    if cfg.use_critic and cfg.loss_type != "policy_loss":
        raise ConfigError("--advantage-estimator ppo trains a critic and needs --loss-type policy_loss")
    if cfg.moe_aux_loss_coeff < 0 or (cfg.moe_z_loss_coeff or 0.0) < 0:
        raise ConfigError(
            f"--moe-aux-loss-coeff and --moe-z-loss-coeff must be >= 0, got {cfg.moe_aux_loss_coeff}, {cfg.moe_z_loss_coeff}"
        )


def _moe(cfg: Config) -> None:
    """Megatron's router options, as far as temper's trainer has them: the load-balancing loss is the Switch loss
    over each micro-batch or within each sequence (temper.train.moe_routing), and the expert bias stays the
    checkpoint's."""
    check_layer_freq(cfg.moe_layer_freq)
    kind, coeff = cfg.moe_router_load_balancing_type, cfg.moe_aux_loss_coeff
    if kind == "sinkhorn":
        raise ConfigError(
            "--moe-router-load-balancing-type sinkhorn routes tokens by Sinkhorn balancing, which temper's trainer "
            "does not do (it routes as the checkpoint's router does); drop it"
        )
    if kind == "global_aux_loss" and coeff:
        raise ConfigError(
            f"--moe-router-load-balancing-type {kind} with --moe-aux-loss-coeff {coeff}: temper's load-balancing loss "
            "is over each micro-batch's tokens (aux_loss) or each sequence's (seq_aux_loss), not over the global "
            "batch; use one of those, or --moe-aux-loss-coeff 0"
        )
    if kind == "none":
        cfg.moe_aux_loss_coeff = 0.0  # Megatron computes no load-balancing loss whatever the coefficient
    rate = cfg.moe_router_bias_update_rate
    if rate not in (None, 0):
        raise ConfigError(
            f"--moe-router-bias-update-rate {rate}: temper keeps the checkpoint's expert bias fixed and does not "
            "update it from the expert loads; pass --moe-router-bias-update-rate 0"
        )
    if cfg.moe_router_enable_expert_bias and rate is None:
        raise ConfigError(
            "--moe-router-enable-expert-bias: Megatron updates that bias from the expert loads at "
            "--moe-router-bias-update-rate (default 1e-3), temper keeps the checkpoint's bias fixed; add "
            "--moe-router-bias-update-rate 0 (as slime's scripts do)"
        )


def _sampling(cfg: Config) -> None:
    if not 0 < cfg.rollout_temperature < math.inf:  # also refuses nan
        raise ConfigError(f"--rollout-temperature must be > 0 (it also divides training logits), got {cfg.rollout_temperature}")
    if cfg.rollout_max_response_len is not None and cfg.rollout_max_response_len < 1:
        raise ConfigError(f"--rollout-max-response-len must be at least 1 token, got {cfg.rollout_max_response_len}")
    if not 0 < cfg.rollout_top_p <= 1:
        raise ConfigError(f"--rollout-top-p must be in (0, 1], got {cfg.rollout_top_p}")
    if cfg.rollout_max_prompt_len is None and cfg.rollout_max_context_len is not None:
        cfg.rollout_max_prompt_len = cfg.rollout_max_context_len - 1
    if cfg.over_sampling_batch_size < cfg.rollout_batch_size:
        raise ConfigError(
            f"--over-sampling-batch-size {cfg.over_sampling_batch_size} must be >= --rollout-batch-size "
            f"{cfg.rollout_batch_size}"
        )
    if cfg.update_weights_interval < 1 or cfg.async_buffer_size < 1:
        raise ConfigError("--update-weights-interval and --async-buffer-size must be >= 1")


DEFAULT_ROLLOUT_FUNCTIONS = (
    "temper.rollout.generate_rollout", "temper.rollout.rollout.generate_rollout",
    "slime.rollout.sglang_rollout.generate_rollout",
)


def _data(cfg: Config) -> None:
    if cfg.num_data_workers not in (0, 1):
        raise ConfigError(
            f"--num-data-workers {cfg.num_data_workers} is not supported: temper reads and templates prompts in the "
            "rollout process, one row at a time (--streaming-data reads files larger than memory lazily); drop it"
        )
    if cfg.max_turns is None:
        return
    if cfg.max_turns < 1:
        raise ConfigError(f"--max-turns must be >= 1, got {cfg.max_turns}")
    if not cfg.custom_generate_function_path and cfg.rollout_function_path in DEFAULT_ROLLOUT_FUNCTIONS:
        raise ConfigError(
            f"--max-turns {cfg.max_turns} is the turn limit of a multi-turn generate function (it reads "
            "args.max_turns); temper's default generate makes one turn: add --custom-generate-function-path "
            "(or --rollout-function-path) or drop --max-turns"
        )


HEALTH_CHECK_FLAGS = ("rollout_health_check_interval", "rollout_health_check_timeout", "rollout_health_check_first_wait")


def _router(cfg: Config) -> None:
    """The --router-* values temper's router takes must be positive numbers (the others are named once by
    the rollout manager as unused)."""
    from temper.rollout.router_flags import router_settings

    try:
        router_settings(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _fault_tolerance(cfg: Config) -> None:
    """The health-check flags mean something only with --use-fault-tolerance; with it they are positive
    (the first wait may be 0)."""
    if cfg.use_fault_tolerance:
        for name in HEALTH_CHECK_FLAGS:
            value = getattr(cfg, name)
            if value < 0 or (value == 0 and name != "rollout_health_check_first_wait"):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}")
        return
    defaults = {f.name: f.default for f in dataclasses.fields(ClusterConfig)}
    changed = [f"--{name.replace('_', '-')} {getattr(cfg, name)}" for name in HEALTH_CHECK_FLAGS
               if getattr(cfg, name) != defaults[name]]  # fmt: skip
    if changed:
        raise ConfigError(
            f"{', '.join(changed)}: engine health checks are part of --use-fault-tolerance; add it or drop them"
        )


def _checkpoint(cfg: Config) -> None:
    if cfg.save_interval is not None and not cfg.save:
        raise ConfigError("--save-interval needs --save DIR (where to write checkpoints)")


def _eval(cfg: Config) -> None:
    items = cfg.eval_prompt_data or []
    if len(items) > 1 and len(items) % 2:
        raise ConfigError(f"--eval-prompt-data takes NAME PATH pairs, got {len(items)} values: {items}")
    names = items[0::2] if len(items) > 1 else []
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"--eval-prompt-data needs a distinct NAME per dataset; named twice: {', '.join(twice)}")
    if cfg.eval_config:
        if items:
            raise ConfigError(
                "--eval-config and --eval-prompt-data both name eval datasets; give one (put every dataset in the "
                "--eval-config file)"
            )
        load_eval_config(cfg.eval_config)  # a bad file stops the run here, naming file, line and field
    if cfg.eval_interval is not None and not items and not cfg.eval_config:
        raise ConfigError("--eval-interval needs --eval-prompt-data NAME PATH or --eval-config FILE.yaml")


def _preflight(cfg: Config) -> None:
    limit = cfg.preflight_max_logprob_diff
    if limit is not None and not 0 < limit < math.inf:  # also refuses nan
        raise ConfigError(
            f"--preflight-max-logprob-diff must be a positive number of nats, got {limit} (--skip-preflight turns "
            "the checks off)"
        )
