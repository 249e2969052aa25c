# Model shape of moonshotai/Moonlight-16B-A3B (DeepseekV3ForCausalLM): source this file and pass
# "${MODEL_ARGS[@]}" to train.py. temper builds the model from --hf-checkpoint and checks these flags
# against its config.json; the tiny-model factory's preset "moonlight-16b-a3b" has this shape.
# Multi-head latent attention without a q LoRA: kv_lora_rank 512, 128 + 64 (RoPE) query/key dims and 128
# value dims per head (--kv-channels is that value width, as in slime). --qk-layernorm is MLA's latent
# norm; Megatron's MLA reads the RoPE columns in DeepSeek's interleaved pairs with --rotary-interleaved
# off. Layer 0 is dense (--ffn-hidden-size), layers 1-26 have 64 routed experts of 1408 (sigmoid scores
# with an expert bias, top 6 in 1 group, weights renormalised and scaled by 2.446) and 2 shared experts.
# The latent attention and expert shapes come from config.json: slime's --multi-latent-attention,
# --kv-lora-rank 512, --qk-head-dim 128, --qk-pos-emb-head-dim 64, --v-head-dim 128,
# --rotary-scaling-factor 1, --mscale 1.0, --mscale-all-dim 1.0, --num-experts 64, --moe-layer-freq,
# --moe-ffn-hidden-size 1408, --moe-router-topk 6, --moe-shared-expert-intermediate-size 2816,
# --moe-router-score-function sigmoid, --moe-router-enable-expert-bias, --moe-router-num-groups 1,
# --moe-router-group-topk 1, --moe-router-topk-scaling-factor 2.446 and the other --moe-* flags are not
# temper flags yet, so they are left out.
MODEL_ARGS=(
   --disable-bias-linear
   --swiglu
   --num-layers 27
   --hidden-size 2048
   --ffn-hidden-size 11264
   --num-attention-heads 16
   --kv-channels 128
   --normalization "RMSNorm"
   --norm-epsilon 1e-5
   --position-embedding-type rope
   --rotary-base 50000
   --rotary-percent 1.0
   --qk-layernorm
   --no-rope-fusion
   --attention-softmax-in-fp32
   --vocab-size 163840
   --untie-embeddings-and-output-weights
)
