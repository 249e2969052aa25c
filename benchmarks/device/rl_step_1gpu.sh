#!/usr/bin/env bash
# End-to-end GRPO on one GPU (colocated), for the device tool: benchmarks/rl_step.py's colocated-1gpu run
# on the Qwen3-0.6B shape (512-token prompts, up to 512 new tokens, 8 prompts x 8 samples, 6 rollouts,
# the first a warm-up), then TRL's GRPOTrainer on the same model folder and prompts
# (benchmarks/trl_grpo.py), then the temper/TRL table; PARTS may add the Qwen3-4B temper run ("4b": it
# needs about 4 minutes, so give it a call of its own). Each part runs under a timeout that the
# call's budget (BUDGET seconds, default 560) also caps; logs and JSON under $OUT.
# Usage (repo root, one GPU, carry [".device"]: pack.tar.xz from `../shared/tools/device-pack orjson` and
# trl.tar.xz from benchmarks/device/trl_pack.sh):
#   bash benchmarks/device/rl_step_1gpu.sh                  # PARTS=temper,trl
#   PARTS=4b bash benchmarks/device/rl_step_1gpu.sh         # the Qwen3-4B temper run alone
#   ARGS_06B / ARGS_4B / ARGS_TRL: extra flags of each run, after the script's own (the last one wins):
#   e.g. ARGS_06B="--recompute --max-tokens-per-gpu 32768", ARGS_4B="--offload-train on", ARGS_TRL="--dtype bfloat16"
set -uo pipefail
mkdir -p /tmp/site && tar xJf .device/pack.tar.xz -C /tmp/site
[ -f .device/trl.tar.xz ] && tar xJf .device/trl.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"
PARTS=${PARTS:-temper,trl} BUDGET=${BUDGET:-560} WORK=/tmp/rl_work
has() { [[ ",$PARTS," == *",$1,"* ]]; }
run() {  # name, timeout, command...: skipped when the call's budget has less than half its timeout left
  local name=$1 want=$2 limit=$2; shift 2
  local left=$((BUDGET - SECONDS - 10)); ((limit > left)) && limit=$left
  if ((limit < want / 2)); then echo "== $name skipped: ${left}s of the budget left"; return; fi
  echo "== $name (timeout ${limit}s)"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "exit $?"
  grep -v -e "Loading weights" -e "Writing model shards" "$OUT/$name.log" | tail -n "${TAIL:-30}"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python - <<'PY'
import importlib.metadata as m
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "missing"
names = "torch transformers accelerate ray pyarrow fsspec pandas trl datasets dill multiprocess xxhash".split()
print(", ".join(f"{name} {version(name)}" for name in names))
PY
R=benchmarks/rl_step.py
WORKLOAD="--steps 6 --prompt-len 512 --response-len 512 --workdir $WORK"  # both temper's and TRL's
# a run cut off by its timeout leaves Ray's processes (and their GPU memory) behind: stop them after each
stop_ray() { python -m ray.scripts.scripts stop --force > /dev/null 2>&1; }
has temper && { run temper_0.6b 270 python $R --model qwen3-0.6b --runs colocated-1gpu $WORKLOAD \
  --out "$OUT/temper_0.6b" --offload-train off ${ARGS_06B:-}; stop_ray; }
has trl && TAIL=12 run trl_0.6b 300 python benchmarks/trl_grpo.py --model qwen3-0.6b $WORKLOAD \
  --out "$OUT/trl_0.6b" --compare-to "$OUT/temper_0.6b/rl_step.json" ${ARGS_TRL:-}
has 4b && { run temper_4b 500 python $R --model qwen3-4b --runs colocated-1gpu $WORKLOAD \
  --out "$OUT/temper_4b" --max-tokens-per-gpu 8192 --recompute ${ARGS_4B:-}; stop_ray; }
echo "== summary"
for f in "$OUT"/temper_*/rl_step.md; do [ -f "$f" ] && { echo "-- $f"; head -n 5 "$f"; }; done
grep -H "response tok/s/GPU:" "$OUT"/*.log 2>/dev/null
[ -f "$OUT/trl_0.6b/compare.md" ] && cat "$OUT/trl_0.6b/compare.md"
exit 0
