"""temper's configuration: typed dataclass groups, one per part, with slime's flag names.

Each field is one command-line flag (`field_name` -> `--field-name`); `temper.command_line` builds the
parser from these fields, so the dataclasses are the single source of truth. Cross-field rules (batch
arithmetic, GPU counts, incompatible options) are `temper.config_rules.validate`'s, which
`temper.command_line.parse_config` runs before any process starts.

`Config` also answers flat attribute access (`cfg.rollout_batch_size`), which is what slime-style
plug-ins expect of their `args`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration mistake, stated in one line with what to do about it."""


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A config field: `default`, the `help` text for --help, and parser extras (choices, flag, ...)."""
    meta = {"help": help, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ClusterConfig:
    actor_num_nodes: int = opt(1, "nodes for the training actor")
    actor_num_gpus_per_node: int = opt(8, "GPUs per node for the training actor (0 on a CPU-only machine)")
    rollout_num_gpus: int | None = opt(None, "GPUs for rollout engines in all (colocate: defaults to the actor's)")
    rollout_num_gpus_per_engine: int = opt(1, "GPUs per engine (tensor parallel size)")
    num_gpus_per_node: int = opt(8, "physical GPUs per node, used to place engines on nodes")
    colocate: bool = opt(
        False, "train and rollout share GPUs; a memory plan at start decides what moves around each phase"
    )
    offload: bool = opt(False, "shorthand for --offload-train --offload-rollout")
    offload_train: bool | None = opt(
        None,
        "move trainer state to CPU outside training (default: off; with --colocate the memory plan's choice on "
        "GPUs, on for CPU runs)",
    )
    offload_rollout: bool | None = opt(
        None,
        "release engine weights and KV cache during training (default: off; with --colocate the memory plan's "
        "choice on GPUs, which may release the KV cache only, on for CPU runs)",
    )
    rollout_backend: str = opt("builtin", "rollout engine", choices=["builtin", "sglang"])
    rollout_external_engine_addrs: list[str] | None = opt(None, "host:port of engines started elsewhere")
    train_backend: str = opt("fsdp", "training backend", choices=["fsdp", "megatron"])
    distributed_backend: str | None = opt(None, "torch.distributed backend (default: nccl on GPU, gloo on CPU)")
    distributed_timeout_minutes: int = opt(10, "timeout of torch.distributed collectives")
    engine_call_timeout: float = opt(
        600.0,
        "seconds the driver waits for each engine's answer to a control call (pause, weight version, memory "
        "release/resume) before it stops the run naming the engine",
    )
    ray_call_timeout: float = opt(
        3600.0,
        "seconds the driver waits for any call to its train and engine workers (start, train, weight sync, "
        "memory moves, save) before it stops the run naming them; their stacks go to <run dir>/stacks/",
    )
    use_fault_tolerance: bool = opt(
        False,
        "health-check every engine with a generation; one that dies or stops answering leaves the router at once, "
        "its requests go to the others, and it is restarted on its own bundle with the current weights (without "
        "it, a failed engine stops the run naming it)",
    )
    rollout_health_check_interval: float = opt(
        30.0, "seconds between engine health checks (with --use-fault-tolerance)"
    )
    rollout_health_check_timeout: float = opt(
        30.0, "seconds an engine's health check (a generation) may take before the engine is restarted "
        "(with --use-fault-tolerance)"
    )
    rollout_health_check_first_wait: float = opt(
        0.0, "seconds after an engine (re)joins the router before its health checks start (with --use-fault-tolerance)"
    )

    @property
    def actor_num_gpus(self) -> int:
        return self.actor_num_nodes * self.actor_num_gpus_per_node


@dataclass
class ModelConfig:
    """Megatron model-shape flags (slime's scripts/models/*.sh). temper builds the model from --hf-checkpoint;
    each given flag is checked against its config.json (temper.model_shape) and a mismatch stops the run."""

    num_layers: int | None = opt(None, "transformer layers (HF num_hidden_layers)")
    hidden_size: int | None = opt(None, "hidden size")
    ffn_hidden_size: int | None = opt(None, "MLP inner size (HF intermediate_size)")
    num_attention_heads: int | None = opt(None, "query heads")
    group_query_attention: bool = opt(False, "grouped-query attention (see --num-query-groups)")
    num_query_groups: int | None = opt(None, "key/value heads (HF num_key_value_heads)")
    kv_channels: int | None = opt(None, "head dimension (HF head_dim)")
    vocab_size: int | None = opt(None, "vocabulary size")
    padded_vocab_size: int | None = opt(None, "vocabulary size after padding: the embedding's rows")
    make_vocab_size_divisible_by: int = opt(
        128,
        "Megatron pads the vocabulary to a multiple of this; temper trains the checkpoint's embedding as it is, so "
        "another value must divide its rows",
    )
    rotary_base: float | None = opt(None, "RoPE theta (HF rope_theta)")
    rotary_percent: float = opt(1.0, "share of the head dimension that is rotated")
    rotary_interleaved: bool = opt(False, "interleaved RoPE (GLM4)")
    use_rotary_position_embeddings: bool = opt(False, "RoPE position embeddings")
    position_embedding_type: str = opt("rope", "position embeddings", choices=["rope", "learned_absolute", "none"])
    no_position_embedding: bool = opt(False, "no learned absolute position embeddings")
    no_rope_fusion: bool = opt(
        False, "no effect: temper's trainer applies RoPE inside the Hugging Face model, never Megatron's fused kernel"
    )
    max_position_embeddings: int | None = opt(None, "maximum positions")
    seq_length: int | None = opt(
        None, "temper packs variable-length sequences, so this only has to fit the checkpoint's max_position_embeddings"
    )
    normalization: str = opt("LayerNorm", "norm layer (RMSNorm: HF rms_norm_eps)", choices=["LayerNorm", "RMSNorm"])
    norm_epsilon: float | None = opt(None, "norm epsilon (HF rms_norm_eps)")
    swiglu: bool = opt(False, "SwiGLU MLP (HF hidden_act silu)")
    untie_embeddings_and_output_weights: bool = opt(False, "separate output layer (HF tie_word_embeddings false)")
    disable_bias_linear: bool = opt(False, "no biases in linear layers (HF: none on o_proj and the MLP)")
    add_qkv_bias: bool = opt(False, "bias on the QKV projection (Qwen2, GLM4: HF attention_bias)")
    qk_layernorm: bool = opt(False, "RMSNorm on queries and keys (Qwen3)")
    post_self_attn_layernorm: bool = opt(False, "norm after self-attention (GLM4)")
    post_mlp_layernorm: bool = opt(False, "norm after the MLP (GLM4)")
    attention_dropout: float = opt(0.0, "attention dropout: the checkpoint's (RL uses 0)")
    hidden_dropout: float = opt(0.0, "hidden dropout: the checkpoint's (RL uses 0)")
    # Mixture of experts (temper.model_shape_moe): checked against config.json like the flags above.
    num_experts: int | None = opt(
        None, "MoE: routed experts per MoE layer (HF num_experts / n_routed_experts); absent from a shape script: a "
        "dense model"
    )
    moe_ffn_hidden_size: int | None = opt(None, "MoE: inner size of each routed expert (HF moe_intermediate_size)")
    moe_router_topk: int | None = opt(None, "MoE: experts per token (HF num_experts_per_tok)")
    moe_layer_freq: str | None = opt(
        None,
        "MoE: the layers with experts: an int k (layers 0, k, 2k, ...) or a list expression of 0 (dense) / 1 (MoE) "
        "per layer such as ([0]*3+[1]*58) (HF first_k_dense_replace, decoder_sparse_step, mlp_only_layers); "
        "absent from an MoE script: every layer",
    )
    moe_shared_expert_intermediate_size: int | None = opt(
        None, "MoE: inner size of the shared experts together (HF n_shared_experts x moe_intermediate_size, or "
        "Qwen2-MoE's shared_expert_intermediate_size); absent from an MoE script: none"
    )
    moe_router_score_function: str = opt(
        "softmax", "MoE: router scores (DeepSeek-V3: sigmoid, Qwen-MoE: softmax)", choices=["softmax", "sigmoid"]
    )
    moe_router_pre_softmax: bool = opt(
        False, "MoE: softmax over all experts before the top k, weights not renormalised (HF norm_topk_prob false; "
        "without it softmax weights are renormalised over the k)"
    )
    moe_router_enable_expert_bias: bool = opt(
        False, "MoE: a per-expert bias that only chooses experts (DeepSeek-V3's e_score_correction_bias)"
    )
    moe_router_num_groups: int | None = opt(None, "MoE: expert groups of group-limited routing (HF n_group)")
    moe_router_group_topk: int | None = opt(None, "MoE: groups each token may use (HF topk_group)")
    moe_router_topk_scaling_factor: float | None = opt(
        None, "MoE: factor on the routed experts' weights (HF routed_scaling_factor); absent from an MoE script: 1"
    )
    moe_router_dtype: str | None = opt(
        None,
        "MoE: precision of routing and of weighing the experts' outputs: fp32 makes the trainer's Qwen-MoE routers "
        "compute logits, softmax and top-k in fp32 (DeepSeek-V3's and GLM-4.5's always do; temper's engine routes "
        "Qwen-MoE from bf16 logits); fp32 stops the run for Mixtral, and fp64 always does",
        choices=["fp32", "fp64"],
    )
    # Multi-latent attention (DeepSeek-V3, Moonlight, Kimi K2)
    multi_latent_attention: bool = opt(False, "multi-latent attention (DeepSeek-V3's MLA)")
    q_lora_rank: int | None = opt(None, "MLA: rank of the query compression (HF q_lora_rank; absent: none)")
    kv_lora_rank: int | None = opt(None, "MLA: rank of the key/value latent (HF kv_lora_rank)")
    qk_head_dim: int | None = opt(None, "MLA: query/key width per head without RoPE (HF qk_nope_head_dim)")
    qk_pos_emb_head_dim: int | None = opt(None, "MLA: query/key RoPE width per head (HF qk_rope_head_dim)")
    v_head_dim: int | None = opt(None, "MLA: value width per head (HF v_head_dim)")
    rotary_scaling_factor: float | None = opt(None, "RoPE scaling factor (HF rope_scaling factor, e.g. YaRN's)")
    mscale: float | None = opt(None, "YaRN mscale (HF rope_scaling mscale)")
    mscale_all_dim: float | None = opt(None, "YaRN mscale_all_dim (HF rope_scaling mscale_all_dim)")


@dataclass
class DataConfig:
    prompt_data: str | None = opt(None, "prompt file: .jsonl or .parquet, optionally with a row slice PATH@[start:end]")
    input_key: str = opt("input", "dataset field with the prompt (text or chat messages)")
    label_key: str | None = opt(None, "dataset field with the label (ground truth)")
    metadata_key: str = opt("metadata", "dataset field with per-prompt metadata (a dict)")
    tool_key: str = opt("tools", "dataset field with the tools offered to the model (a list)")
    apply_chat_template: bool = opt(False, "render prompts with the tokenizer's chat template")
    apply_chat_template_kwargs: dict = opt({}, "JSON dict of extra chat-template arguments", json=True)
    skip_invalid_data: bool = opt(False, "skip (count and log) bad dataset rows instead of stopping")
    streaming_data: bool = opt(False, "read prompt files lazily (datasets larger than memory)")
    num_data_workers: int = opt(
        1, "only 1 (or 0): temper reads and templates prompts in the rollout process; another value stops the run"
    )
    rollout_shuffle: bool = opt(False, "shuffle prompts each epoch (seed: rollout-seed + epoch)")
    rollout_seed: int = opt(42, "shuffle seed and base sampling seed")
    num_rollout: int | None = opt(None, "rollout steps to run (or give --num-epoch)")
    num_epoch: int | None = opt(None, "passes over the prompt data; derives --num-rollout")
    start_rollout_id: int | None = opt(None, "first rollout id (default: from the checkpoint, else 0)")
    rollout_batch_size: int | None = opt(None, "prompts per rollout step (required)")
    n_samples_per_prompt: int = opt(1, "responses generated per prompt (the GRPO group size)")
    global_batch_size: int | None = opt(None, "samples per optimizer step (derived from --num-steps-per-rollout)")
    num_steps_per_rollout: int | None = opt(None, "optimizer steps per rollout step")
    data_source_path: str = opt("temper.data.RolloutDataSourceWithBuffer", "data source class (import path)")
    buffer_filter_path: str | None = opt(None, "fn(args, rollout_id, buffer, num_samples) choosing groups from the buffer")


@dataclass
class RolloutConfig:
    rollout_function_path: str = opt("temper.rollout.generate_rollout", "rollout function (import path)")
    loss_mask_type: str = opt(
        "qwen",
        "slime's SFT loss-mask family; temper's SFT rollout cuts the assistant turns out of the model's own chat "
        "template for every family, so each value gives the same mask",
        choices=["qwen", "qwen3", "qwen3_5", "distill_qwen"],
    )
    custom_generate_function_path: str | None = opt(
        None, "async generate(args, sample, sampling_params), or custom_generate(args, samples, evaluation=False) "
        "over one group's samples (import path)"
    )
    rollout_temperature: float = opt(1.0, "sampling temperature; training divides logits by it too")
    rollout_top_p: float = opt(1.0, "nucleus sampling p")
    rollout_top_k: int = opt(-1, "top-k sampling (-1: off)")
    rollout_max_context_len: int | None = opt(None, "maximum prompt+response tokens")
    rollout_max_prompt_len: int | None = opt(None, "drop longer prompts at load (default: context length - 1)")
    rollout_max_response_len: int | None = opt(None, "max_new_tokens per response")
    rollout_skip_special_tokens: bool = opt(False, "detokenize responses without special tokens")
    rollout_stop: list[str] | None = opt(None, "stop strings")
    rollout_stop_token_ids: list[int] | None = opt(None, "stop token ids")
    over_sampling_batch_size: int | None = opt(None, "prompts per refill when filtering (default: rollout batch size)")
    dynamic_sampling_filter_path: str | None = opt(None, "fn(args, group) -> keep? (import path)")
    rollout_sample_filter_path: str | None = opt(None, "fn(args, groups) marking remove_sample (import path)")
    rollout_all_samples_process_path: str | None = opt(None, "fn(args, all_samples, data_source) (import path)")
    partial_rollout: bool = opt(False, "recycle aborted, unfinished groups into the buffer")
    mask_offpolicy_in_partial_rollout: bool = opt(False, "no loss on tokens generated by an older policy")
    max_turns: int | None = opt(
        None, "turn limit of a multi-turn --custom-generate-function-path (it reads args.max_turns); needs one"
    )
    sglang_server_concurrency: int = opt(512, "in-flight requests per engine")
    update_weights_interval: int = opt(1, "rollouts between weight syncs (train_async)")
    async_buffer_size: int = opt(1, "rollouts generated ahead of training (train_async staleness bound)")
    update_weight_buffer_size: int = opt(512 * 1024**2, "bytes per weight-sync bucket")
    update_weight_transport: str | None = opt(
        None,
        "how weights reach the engines: broadcast (NCCL/gloo group), ipc (CUDA IPC on the same GPU), tensor "
        "(same-host shared memory) or disk (default: ipc with --colocate on CUDA, tensor with --colocate on CPU, "
        "else broadcast; nccl is slime's name for broadcast)",
        choices=["broadcast", "ipc", "tensor", "disk", "nccl"],
    )
    update_weight_disk_dir: str | None = opt(None, "folder for --update-weight-transport disk (shared by all nodes)")
    check_weight_update_equal: bool = opt(
        False, "verify engine weights equal the trainer's after every sync (the preflight checks the first one)"
    )
    skip_preflight: bool = opt(
        False,
        "skip the step-0 preflight, which stops the run when the engines' weights differ from the trainer's after "
        "the first sync, the first optimizer step's ratio is not 1 (ppo_kl 0), or the trainer-engine log-prob gap "
        "is above --preflight-max-logprob-diff",
    )
    preflight_max_logprob_diff: float | None = opt(
        None,
        "largest train_rollout_logprob_abs_diff the preflight accepts on the first step (default: 1e-3 when "
        "trainer and engines compute in fp32, 0.1 otherwise)",
    )


@dataclass
class AlgorithmConfig:
    advantage_estimator: str = opt(
        "grpo",
        "advantage estimator",
        choices=["grpo", "gspo", "cispo", "rloo", "ppo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"],
    )
    loss_type: str = opt("policy_loss", "loss", choices=["policy_loss", "sft_loss", "custom_loss"])
    custom_loss_function_path: str | None = opt(
        None, "with --loss-type custom_loss: fn(args, batch, logits, sum_of_sample_mean) -> (loss, metrics)"
    )
    custom_advantage_function_path: str | None = opt(
        None, 'fn(args, rollout_data) setting rollout_data["advantages"] and ["returns"] (replaces the estimator)'
    )
    disable_compute_advantages_and_returns: bool = opt(False, "skip ref/old log-probs and advantages (SFT)")
    eps_clip: float = opt(0.2, "lower PPO clip epsilon")
    eps_clip_high: float | None = opt(None, "upper PPO clip epsilon (default: --eps-clip)")
    eps_clip_c: float | None = opt(None, "dual-clip constant c > 1")
    value_clip: float = opt(0.2, "critic value clip")
    kl_coef: float = opt(0.0, "KL penalty folded into rewards")
    use_kl_loss: bool = opt(False, "add KL(actor || ref) to the loss")
    kl_loss_coef: float = opt(0.0, "weight of the KL loss")
    kl_loss_type: str = opt("k1", "KL estimator", choices=["k1", "k2", "k3", "low_var_kl"])
    use_unbiased_kl: bool = opt(False, "weight the KL loss by exp(logp - old_logp)")
    ref_update_interval: int | None = opt(None, "copy actor weights to the reference every N rollouts")
    entropy_coef: float = opt(0.0, "entropy bonus weight")
    gamma: float = opt(1.0, "discount")
    lambd: float = opt(1.0, "GAE lambda")
    ppo_mask_tool_tokens: bool = opt(
        False,
        "PPO on multi-turn data: no KL penalty on tool tokens (loss mask 0), the reward on the last trained token "
        "and GAE ending there (temper's option; default as slime: every response token, the reward on the last)",
    )
    normalize_advantages: bool = opt(False, "whiten advantages over the batch")
    disable_grpo_std_normalization: bool = opt(False, "GRPO without dividing by the group std (Dr.GRPO)")
    disable_rewards_normalization: bool = opt(False, "no group reward normalization at all")
    use_rollout_logprobs: bool = opt(False, "use the engine's log-probs as the old policy")
    use_tis: bool = opt(False, "truncated importance sampling against the engine's log-probs")
    tis_clip: float = opt(2.0, "TIS upper clip")
    tis_clip_low: float = opt(0.0, "TIS lower clip")
    custom_tis_function_path: str | None = opt(
        None,
        "with --use-tis: fn(args, *, pg_loss, train_log_probs, rollout_log_probs, loss_masks, total_lengths, "
        "response_lengths) -> (pg_loss, loss_masks, metrics); slime's icepop_function/vanilla_tis_function are built in",
    )
    custom_pg_loss_reducer_function_path: str | None = opt(
        None,
        "fn(total_lengths, response_lengths, loss_masks, calculate_per_token_loss) -> reducer of the policy-gradient "
        "term (e.g. Dr.GRPO's constant denominator; README)",
    )
    calculate_per_token_loss: bool = opt(False, "average the loss over all tokens of a step, not per sample")
    use_routing_replay: bool = opt(
        False, "MoE: record each token's experts in the old-log-prob forward and replay them in training"
    )
    use_rollout_routing_replay: bool = opt(
        False,
        "MoE (R3): the engine returns each token's routed experts and training (old log-probs too) replays them",
    )
    moe_aux_loss_coeff: float = opt(0.0, "MoE: weight of the routers' load-balancing loss, summed over MoE layers")
    moe_z_loss_coeff: float | None = opt(None, "MoE: weight of the routers' z-loss, summed over MoE layers")
    moe_router_load_balancing_type: str = opt(
        "aux_loss",
        "MoE: the load-balancing loss that --moe-aux-loss-coeff weighs: aux_loss (the Switch loss over each "
        "micro-batch), seq_aux_loss (DeepSeek-V3's, within each sequence, averaged over sequences); none turns "
        "the loss off; global_aux_loss stops the run unless --moe-aux-loss-coeff is 0, sinkhorn (another routing) "
        "always",
        choices=["aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "none"],
    )
    moe_router_bias_update_rate: float | None = opt(
        None,
        "MoE: Megatron's update rate of the expert bias (--moe-router-enable-expert-bias); temper keeps the "
        "checkpoint's bias fixed, so only 0 is accepted, and an expert bias needs it said",
    )
    num_critic_only_steps: int = opt(0, "first rollouts train only the critic (PPO)")

    @property
    def grpo_std_normalization(self) -> bool:
        return not self.disable_grpo_std_normalization

    @property
    def rewards_normalization(self) -> bool:
        return not self.disable_rewards_normalization


@dataclass
class TrainConfig:
    micro_batch_size: int = opt(1, "samples per micro-batch (ignored with --use-dynamic-batch-size)")
    use_dynamic_batch_size: bool = opt(False, "pack micro-batches by token budget")
    max_tokens_per_gpu: int | None = opt(None, "token budget per micro-batch (with --use-dynamic-batch-size)")
    log_probs_chunk_size: int = opt(-1, "rows per chunk when computing log-probs (-1: automatic)")
    lr: float = opt(1e-6, "learning rate")
    critic_lr: float | None = opt(None, "critic learning rate (PPO; default: --lr)")
    min_lr: float = opt(0.0, "floor of the decayed learning rate")
    lr_warmup_iters: int = opt(0, "linear warmup steps")
    lr_decay_iters: int | None = opt(None, "steps to decay over (default: all optimizer steps)")
    lr_decay_style: str = opt("constant", "learning-rate schedule", choices=["constant", "linear", "cosine"])
    weight_decay: float = opt(0.0, "AdamW weight decay")
    clip_grad: float = opt(1.0, "gradient-norm clip (0: off)")
    adam_beta1: float = opt(0.9, "Adam beta1")
    adam_beta2: float = opt(0.999, "Adam beta2")
    adam_eps: float = opt(1e-8, "Adam epsilon")
    optimizer: str = opt("adam", "optimizer (AdamW)", choices=["adam"])
    seed: int = opt(1234, "training seed")
    bf16: bool = opt(False, "bf16 parameters (default on GPU)")
    recompute_activations: bool = opt(False, "activation checkpointing")
    recompute_granularity: str | None = opt(None, "accepted; any value turns on activation checkpointing")
    recompute_method: str | None = opt(
        None,
        "with --recompute-granularity full: uniform (temper recomputes every decoder layer, one checkpoint per "
        "layer); block (only --recompute-num-layers layers) stops the run unless it covers every layer",
        choices=["uniform", "block"],
    )
    recompute_num_layers: int | None = opt(
        None, "with --recompute-granularity full: layers per recompute chunk (uniform) or recomputed (block)"
    )
    tensor_model_parallel_size: int = opt(1, "Megatron backend only; must be 1 with FSDP")
    pipeline_model_parallel_size: int = opt(1, "Megatron backend only; must be 1 with FSDP")
    context_parallel_size: int = opt(1, "Megatron backend only; must be 1 with FSDP")
    expert_model_parallel_size: int = opt(1, "Megatron backend only; must be 1 with FSDP")
    sequence_parallel: bool = opt(False, "Megatron backend only; must be off with FSDP")
    accumulate_allreduce_grads_in_fp32: bool = opt(
        False, "no effect: temper's FSDP trainer always reduces and accumulates gradients in fp32"
    )
    attention_softmax_in_fp32: bool = opt(
        False, "no effect: temper's attention always keeps its softmax in fp32 (Flash Attention on GPU, fp32 on CPU)"
    )
    attention_backend: str | None = opt(
        None,
        "flash or auto: temper's trainer runs Flash Attention over packed rows on GPU; fused, unfused and local "
        "stop the run",
        choices=["flash", "fused", "unfused", "local", "auto"],
    )
    moe_grouped_gemm: bool = opt(
        False, "no effect: temper's trainer always runs the routed experts as grouped GEMMs over the tokens sorted "
        "by expert (torch._grouped_mm on GPU)"
    )
    moe_permute_fusion: bool = opt(
        False, "no effect: temper's trainer sorts tokens to their experts inside its grouped GEMM experts; Megatron's "
        "fused permutation gives the same sums"
    )
    moe_token_dispatcher_type: str | None = opt(
        None,
        "no effect: temper has no expert parallelism, so each rank routes its own tokens to its own experts and "
        "nothing is dispatched between ranks (alltoall and allgather give the same sums)",
        choices=["alltoall", "allgather"],
    )
    moe_token_drop_policy: str | None = opt(
        None,
        "no effect: temper drops no tokens (Megatron drops only with an expert capacity factor, which temper has not)",
        choices=["probs", "position"],
    )
    no_masked_softmax_fusion: bool = opt(
        False, "no effect: temper's attention never uses Megatron's fused masked softmax"
    )
    use_precision_aware_optimizer: bool = opt(
        False, "not supported: AdamW's master weights and state stay fp32 (setting it stops the run)"
    )
    optimizer_cpu_offload: bool = opt(
        False, "keep AdamW's state in CPU memory outside the optimizer step (GPU runs; CPU runs have it there already)"
    )


@dataclass
class CheckpointConfig:
    hf_checkpoint: str | None = opt(None, "Hugging Face model folder: initial weights, tokenizer, engine model")
    load: str | None = opt(None, "checkpoint folder to resume from")
    save: str | None = opt(None, "checkpoint folder to write")
    save_interval: int | None = opt(None, "rollouts between checkpoints (needs --save)")
    no_save_optim: bool = opt(False, "checkpoints without optimizer state")
    save_hf: str | None = opt(None, "also export HF weights to this path template ({rollout_id})")
    ref_load: str | None = opt(None, "reference-model checkpoint (default: --hf-checkpoint)")


@dataclass
class EvalConfig:
    eval_prompt_data: list[str] | None = opt(
        None,
        "NAME PATH [NAME PATH ...] evaluation datasets; the flag may be repeated (a lone PATH is named after its file)",
        pairs=True,
    )
    eval_config: str | None = opt(
        None,
        "YAML file of eval datasets with per-dataset settings (slime's eval.defaults / eval.datasets: name, path, "
        "rm_type, input_key, n_samples_per_eval_prompt, temperature, max_response_len, ...); instead of "
        "--eval-prompt-data",
        metavar="FILE.yaml",
    )
    eval_interval: int | None = opt(None, "rollouts between evaluations")
    eval_function_path: str | None = opt(None, "eval rollout function (default: the rollout function)")
    skip_eval_before_train: bool = opt(False, "no evaluation before the first step")
    n_samples_per_eval_prompt: int = opt(1, "samples per eval prompt")
    eval_temperature: float | None = opt(None, "eval temperature (default: rollout's)")
    eval_top_p: float | None = opt(None, "eval top-p (default: rollout's)")
    eval_top_k: int | None = opt(None, "eval top-k (default: rollout's)")
    eval_max_response_len: int | None = opt(None, "eval max new tokens (default: rollout's)")
    eval_max_prompt_len: int | None = opt(None, "drop longer eval prompts")
    eval_input_key: str | None = opt(None, "eval prompt field (default: --input-key)")
    eval_label_key: str | None = opt(None, "eval label field (default: --label-key)")
    eval_reward_key: str | None = opt(None, "key into dict rewards for eval (default: --reward-key)")

    @property
    def eval_datasets(self) -> dict[str, str]:
        """{name: path} from --eval-prompt-data; a lone path is named after its file (with --eval-config:
        `temper.eval_config.eval_datasets_of`)."""
        items = self.eval_prompt_data or []
        if len(items) == 1:
            from pathlib import Path

            return {Path(items[0].split("@")[0]).stem: items[0]}
        return dict(zip(items[0::2], items[1::2]))


@dataclass
class RewardConfig:
    rm_type: str | None = opt(None, "built-in reward (math, dapo, deepscaler, f1, gpqa, remote_rm, random)")
    custom_rm_path: str | None = opt(None, "async rm(args, sample) -> float | dict (import path)")
    group_rm: bool = opt(False, "the reward function scores a whole group at once")
    reward_model_path: str | None = opt(None, "model_path given to a class-style --custom-rm-path (built once)")
    rm_url: str | None = opt(None, "URL of a remote reward model (remote_rm)")
    reward_key: str | None = opt(None, "key into dict rewards")
    custom_reward_post_process_path: str | None = opt(None, "fn(args, samples) -> (raw, normalized) rewards")
    custom_convert_samples_to_train_data_path: str | None = opt(
        None,
        'fn(args, samples) -> dict of "tokens", "response_lengths", "rewards", "loss_masks" (and optionally '
        '"raw_reward", "truncated", "sample_indices", "rollout_log_probs"), replacing reward post-processing and '
        "conversion (import path)",
    )


@dataclass
class LoggingConfig:
    use_wandb: bool = opt(False, "log to Weights & Biases")
    wandb_project: str | None = opt(None, "W&B project")
    wandb_group: str | None = opt(None, "W&B group")
    wandb_mode: str | None = opt(None, "W&B mode", choices=["online", "offline", "disabled"])
    wandb_dir: str | None = opt(None, "W&B directory")
    use_tensorboard: bool = opt(False, "log to TensorBoard")
    tb_project_name: str | None = opt(None, "TensorBoard folder (default: $TENSORBOARD_DIR)")
    tb_experiment_name: str | None = opt(None, "TensorBoard run name")
    log_passrate: bool = opt(False, "log passrate/pass@k (k = 1, 2, 4, ... <= n) over each rollout's prompt groups")
    run_dir: str | None = opt(None, "folder for metrics.jsonl and the end-of-run report (default: --save, else runs/DATE-TIME)")
    debug_rollout_only: bool = opt(False, "run only the rollout engines (no trainer)")
    debug_train_only: bool = opt(False, "run only the trainer (no engines)")
    save_debug_rollout_data: str | None = opt(
        None,
        "record each rollout's samples to this path template ({rollout_id}) instead of <run dir>/rollouts/; a .gz "
        "name gets temper's compressed record, any other slime's torch.save file",
    )
    load_debug_rollout_data: str | None = opt(
        None,
        "replay recorded rollouts from this template or run folder into training, without engines (implies "
        "--debug-train-only)",
    )
    disable_rollout_recording: bool = opt(
        False,
        "do not record rollouts to <run dir>/rollouts/{rollout_id:06d}.pkl.gz (on by default: token ids, log-probs, "
        "rewards, weight versions and seeds of every sample, gzip'd, for --load-debug-rollout-data)",
    )


@dataclass
class EngineConfig:
    """SGLang/router pass-through flags: `--sglang-NAME VALUE` lands in `sglang['NAME']`."""

    sglang: dict[str, Any] = field(default_factory=dict)
    router: dict[str, Any] = field(default_factory=dict)


GROUPS: dict[str, type] = {
    "cluster": ClusterConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "rollout": RolloutConfig,
    "algorithm": AlgorithmConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
    "eval": EvalConfig,
    "reward": RewardConfig,
    "logging": LoggingConfig,
    "engine": EngineConfig,
}


def _field_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            if f.name in index:
                raise AssertionError(f"config field {f.name} is defined in both {index[f.name]} and {group}")
            index[f.name] = group
    return index


FIELD_GROUP = _field_index()


@dataclass
class Config:
    """The whole run's configuration: one attribute per group, plus flat access to every field."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: route slime-style flat names to their group.
        group = FIELD_GROUP.get(name)
        if group is None:
            for cls_name in GROUPS:
                if hasattr(type(self.__dict__.get(cls_name)), name):
                    return getattr(self.__dict__[cls_name], name)
            raise AttributeError(f"Config has no field {name!r}")
        return getattr(self.__dict__[group], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in GROUPS:
            object.__setattr__(self, name, value)
        elif name in FIELD_GROUP:
            setattr(getattr(self, FIELD_GROUP[name]), name, value)
        else:
            object.__setattr__(self, name, value)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> Config:
        """Build from {field_name: value}; unknown names are an error."""
        cfg = cls()
        for name, value in values.items():
            if name not in FIELD_GROUP:
                raise ConfigError(f"unknown config field {name!r}")
            setattr(cfg, name, value)
        return cfg

    def to_flat(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for cls in GROUPS.values() for f in dataclasses.fields(cls)}

    @property
    def use_critic(self) -> bool:
        return self.advantage_estimator == "ppo"
