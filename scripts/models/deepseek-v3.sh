# Model shape of deepseek-ai/DeepSeek-V3 (and R1; DeepseekV3ForCausalLM): source this file and pass
# "${MODEL_ARGS[@]}" to train.py. temper builds the model from --hf-checkpoint and checks these flags
# against its config.json; the tiny-model factory's preset "deepseek-v3" has this shape (without YaRN).
# Multi-head latent attention: q_lora_rank 1536, kv_lora_rank 512, 128 + 64 (RoPE) query/key dims and
# 128 value dims per head (--kv-channels is that value width, as in slime). --qk-layernorm is MLA's
# latent norms; Megatron's MLA reads the RoPE columns in DeepSeek's interleaved pairs with
# --rotary-interleaved off. Layers 0-2 are dense (--ffn-hidden-size), layers 3-60 have 256 routed
# experts of 2048 (sigmoid scores with an expert bias; the top 4 of 8 groups, then the top 8 experts,
# weights renormalised and scaled by 2.5) and 1 shared expert. MODEL_ARGS_NUM_LAYERS shortens the stack
# as slime's script does (a checkpoint cut to that many layers).
# The latent attention and expert shapes come from config.json: slime's --multi-latent-attention,
# --q-lora-rank 1536, --kv-lora-rank 512, --qk-head-dim 128, --qk-pos-emb-head-dim 64, --v-head-dim 128,
# --rotary-scaling-factor 40, --mscale 1.0, --mscale-all-dim 1.0, --num-experts 256, --moe-layer-freq,
# --moe-ffn-hidden-size 2048, --moe-router-topk 8, --moe-shared-expert-intermediate-size 2048,
# --moe-router-score-function sigmoid, --moe-router-enable-expert-bias, --moe-router-num-groups 8,
# --moe-router-group-topk 4, --moe-router-topk-scaling-factor 2.5 and the other --moe-* flags are not
# temper flags yet, so they are left out. temper's engine does not serve DeepSeek-V3's YaRN RoPE scaling
# or its FP8 checkpoint yet (see temper/engine/models/deepseek_v3.py).
MODEL_ARGS=(
   --disable-bias-linear
   --swiglu
   --num-layers "${MODEL_ARGS_NUM_LAYERS:-61}"
   --hidden-size 7168
   --ffn-hidden-size 18432
   --num-attention-heads 128
   --kv-channels 128
   --normalization "RMSNorm"
   --norm-epsilon 1e-6
   --position-embedding-type rope
   --rotary-base 10000
   --qk-layernorm
   --no-rope-fusion
   --attention-softmax-in-fp32
   --vocab-size 129280
   --untie-embeddings-and-output-weights
)
