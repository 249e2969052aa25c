# Model shape of Qwen/Qwen3-0.6B: source this file and pass "${MODEL_ARGS[@]}" to train.py.
# temper builds the model from --hf-checkpoint and checks these flags against its config.json.
MODEL_ARGS=(
   --swiglu
   --num-layers 28
   --hidden-size 1024
   --ffn-hidden-size 3072
   --num-attention-heads 16
   --group-query-attention
   --num-query-groups 8
   --kv-channels 128
   --use-rotary-position-embeddings
   --disable-bias-linear
   --normalization "RMSNorm"
   --norm-epsilon 1e-6
   --rotary-base "${MODEL_ARGS_ROTARY_BASE:-1000000}"
   --vocab-size 151936
   --qk-layernorm
)
