# Model shape of temper's tiny Qwen3 test checkpoint (`python -m temper.testing.tiny_models DIR`, preset
# "tiny"): qwen3-0.6B.sh's flags at toy size, so that slime's quick start runs unchanged on a CPU.
# temper builds the model from --hf-checkpoint and checks these flags against its config.json.
MODEL_ARGS=(
   --swiglu
   --num-layers 2
   --hidden-size 128
   --ffn-hidden-size 256
   --num-attention-heads 4
   --group-query-attention
   --num-query-groups 2
   --kv-channels 32
   --use-rotary-position-embeddings
   --disable-bias-linear
   --normalization "RMSNorm"
   --norm-epsilon 1e-6
   --rotary-base "${MODEL_ARGS_ROTARY_BASE:-1000000}"
   --vocab-size 1024
   --qk-layernorm
)
