# Model shape of deepseek-ai/DeepSeek-V3 (and R1; DeepseekV3ForCausalLM): source this file and pass
# "${MODEL_ARGS[@]}" to train.py. temper builds the model from --hf-checkpoint and checks these flags
# against its config.json; the tiny-model factory's preset "deepseek-v3" has this shape (without YaRN,
# so --rotary-scaling-factor, --mscale and --mscale-all-dim match only a config.json that has it).
# Multi-head latent attention: q_lora_rank 1536, kv_lora_rank 512, 128 + 64 (RoPE) query/key dims and
# 128 value dims per head (--kv-channels is that value width, as in slime). --qk-layernorm is MLA's
# latent norms; Megatron's MLA reads the RoPE columns in DeepSeek's interleaved pairs with
# --rotary-interleaved off. Layers 0-2 are dense (--ffn-hidden-size), layers 3-60 have 256 routed
# experts of 2048 (sigmoid scores with an expert bias; the top 4 of 8 groups, then the top 8 experts,
# weights renormalised and scaled by 2.5) and 1 shared expert. MODEL_ARGS_NUM_LAYERS shortens the stack
# as slime's script does (a checkpoint cut to that many layers). The expert bias stays the checkpoint's
# (--moe-router-bias-update-rate 0); with --moe-aux-loss-coeff 0 no load-balancing loss is computed, so
# the seq_aux_loss type is accepted. --moe-grouped-gemm, --moe-permute-fusion and
# --moe-token-dispatcher-type change nothing (temper always runs grouped GEMMs on one rank).
# temper's engine does not serve DeepSeek-V3's YaRN RoPE scaling or its FP8 checkpoint yet (see
# temper/engine/models/deepseek_v3.py).
NLAYERS="${MODEL_ARGS_NUM_LAYERS:-61}"
FIRST_K_DENSE_REPLACE=3
MODEL_ARGS=(
   --disable-bias-linear
   --swiglu
   --num-layers "$NLAYERS"
   --hidden-size 7168
   --ffn-hidden-size 18432
   --num-attention-heads 128
   --kv-channels 128
   --normalization "RMSNorm"
   --norm-epsilon 1e-6
   --position-embedding-type rope
   --untie-embeddings-and-output-weights
   --vocab-size 129280

   --multi-latent-attention
   --q-lora-rank 1536
   --kv-lora-rank 512
   --qk-head-dim 128
   --qk-pos-emb-head-dim 64
   --v-head-dim 128
   --qk-layernorm
   --rotary-scaling-factor 40
   --rotary-base 10000
   --mscale 1.0
   --mscale-all-dim 1.0
   --attention-softmax-in-fp32
   --no-rope-fusion

   # moe
   --num-experts 256
   --moe-layer-freq "([0]*$FIRST_K_DENSE_REPLACE+[1]*$((NLAYERS - FIRST_K_DENSE_REPLACE)))"
   --moe-ffn-hidden-size 2048
   --moe-router-topk 8
   --moe-shared-expert-intermediate-size 2048
   --moe-router-pre-softmax
   --moe-router-score-function sigmoid
   --moe-router-enable-expert-bias
   --moe-router-load-balancing-type seq_aux_loss
   --moe-token-dispatcher-type alltoall
   --moe-aux-loss-coeff 0
   --moe-router-bias-update-rate 0
   --moe-router-group-topk 4
   --moe-router-num-groups 8
   --moe-grouped-gemm
   --moe-router-topk-scaling-factor 2.5
   --moe-router-dtype fp32
   --moe-permute-fusion
)
