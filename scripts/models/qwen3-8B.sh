# Model shape of Qwen/Qwen3-8B: source this file and pass "${MODEL_ARGS[@]}" to train.py.
# temper builds the model from --hf-checkpoint and checks these flags against its config.json.
MODEL_ARGS=(
   --swiglu
   --num-layers 36
   --hidden-size 4096
   --ffn-hidden-size 12288
   --num-attention-heads 32
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
   --untie-embeddings-and-output-weights
)
