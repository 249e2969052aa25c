# Model shape of moonshotai/Moonlight-16B-A3B (DeepseekV3ForCausalLM): source this file and pass
# "${MODEL_ARGS[@]}" to train.py. temper builds the model from --hf-checkpoint and checks these flags
# against its config.json; the tiny-model factory's preset "moonlight-16b-a3b" has this shape.
# Multi-head latent attention without a q LoRA: kv_lora_rank 512, 128 + 64 (RoPE) query/key dims and 128
# value dims per head (--kv-channels is that value width, as in slime). --qk-layernorm is MLA's latent
# norm; Megatron's MLA reads the RoPE columns in DeepSeek's interleaved pairs with --rotary-interleaved
# off. No RoPE scaling (--rotary-scaling-factor 1; --mscale and --mscale-all-dim, YaRN's, are not checked
# against a config.json without YaRN). Layer 0 is dense (--ffn-hidden-size), layers 1-26 have 64 routed
# experts of 1408 (sigmoid scores with an expert bias, top 6 in 1 group, weights renormalised and scaled
# by 2.446) and 2 shared experts (2 x 1408). The expert bias stays the checkpoint's
# (--moe-router-bias-update-rate 0); with --moe-aux-loss-coeff 0 no load-balancing loss is computed, so
# the seq_aux_loss type is accepted. --moe-grouped-gemm, --moe-permute-fusion,
# --moe-token-dispatcher-type, --moe-token-drop-policy and --no-masked-softmax-fusion change nothing.
MOE_SHARED_EXPERTS=2
MOE_FFN_HIDDEN=1408
NLAYERS=27
FIRST_K_DENSE_REPLACE=1
MODEL_ARGS=(
   --disable-bias-linear
   --swiglu
   --num-layers "$NLAYERS"
   --hidden-size 2048
   --ffn-hidden-size 11264
   --num-attention-heads 16
   --kv-channels 128
   --normalization "RMSNorm"
   --norm-epsilon 1e-5
   --position-embedding-type rope
   --rotary-percent 1.0
   --untie-embeddings-and-output-weights
   --no-masked-softmax-fusion
   --vocab-size 163840

   --multi-latent-attention
   --kv-lora-rank 512
   --qk-head-dim 128
   --qk-pos-emb-head-dim 64
   --v-head-dim 128
   --qk-layernorm
   --rotary-scaling-factor 1
   --rotary-base 50000
   --mscale 1.0
   --mscale-all-dim 1.0
   --attention-softmax-in-fp32
   --no-rope-fusion

   # moe
   --num-experts 64
   --moe-layer-freq "([0]*$FIRST_K_DENSE_REPLACE+[1]*$((NLAYERS - FIRST_K_DENSE_REPLACE)))"
   --moe-ffn-hidden-size "$MOE_FFN_HIDDEN"
   --moe-router-topk 6
   --moe-shared-expert-intermediate-size $((MOE_FFN_HIDDEN * MOE_SHARED_EXPERTS))
   --moe-router-pre-softmax
   --moe-router-score-function sigmoid
   --moe-router-enable-expert-bias
   --moe-router-load-balancing-type seq_aux_loss
   --moe-token-dispatcher-type alltoall
   --moe-aux-loss-coeff 0
   --moe-router-bias-update-rate 0
   --moe-router-group-topk 1
   --moe-router-num-groups 1
   --moe-grouped-gemm
   --moe-router-topk-scaling-factor 2.446
   --moe-token-drop-policy probs
   --moe-router-dtype fp32
   --moe-permute-fusion
)
