# Sourced by the device scripts, from the repo root with .device carried (its pack.tar.xz from
# ../shared/tools/device-pack): the pack unpacked onto PYTHONPATH, $OUT made, the card and versions printed.
#   has PART                 whether PART is one of the comma-separated $PARTS
#   run NAME LIMIT CMD...    CMD under `timeout LIMIT`, its output in $OUT/NAME.log; prints its exit status and the
#                            log's last $TAIL lines (default 12)
set -uo pipefail
mkdir -p /tmp/site && tar xJf .device/pack.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
has() { [[ ",${PARTS:-}," == *",$1,"* ]]; }
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "exit $?"
  grep -v "Loading weights" "$OUT/$name.log" | tail -n "${TAIL:-12}"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
