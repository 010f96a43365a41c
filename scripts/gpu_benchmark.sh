#!/usr/bin/env bash
# Measures hrnet_jax on one GPU and prints every figure as soon as it is taken.
#
#   bash scripts/gpu_benchmark.sh [PART ...]      (default: env w32 warm e2e unrolled)
#
# Parts, each bounded by its own time limit (seconds, in brackets):
#   env       versions and the device                                        [60]
#   w32       HRNet-W32 256x256, batch 32, scanned: bf16 and fp32 train and
#             eval+flip, compile from a cold persistent cache               [230]
#   warm      the same again: compile times with the cache warm              [90]
#   e2e       scripts/train.py --bf16 on 1280x720 synthetic JPEGs with 14
#             data workers: time to the first step, step rate, Data time,
#             the rate after validation                                    [150]
#   unrolled  W32 bf16 train step with model.scan=none (compile and speed)  [120]
#   w48       HRNet-W48 bf16 train and eval+flip, scanned                   [150]
#   data      scripts/bench_data.py at 16 workers on 1280x720 JPEGs          [90]
#   scans     W32 bf16 train with model.scan=blocks and =modules           [200]
# The default parts take at most 650 s. Results go to $OUT (default
# /tmp/hrnet_jax_gpu): JSON from the benchmark, the training log; the XLA cache
# and the synthetic images to $WORK (default /tmp/hrnet_jax_work).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/hrnet_jax_gpu}
WORK=${WORK:-/tmp/hrnet_jax_work}
CACHE="$WORK/xla_cache"
mkdir -p "$OUT" "$WORK"
PY=${PYTHON:-python}

part() {
  local limit=$1
  shift
  echo "=== $(date +%T) [limit ${limit} s] $*"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  echo "=== exit $? after $((SECONDS - start)) s"
}

bench() {  # bench LIMIT JSON_NAME ARGS...
  local limit=$1 name=$2
  shift 2
  part "$limit" "$PY" scripts/benchmark.py --batch-size 32 --steps 20 --warmup 3 \
    --compilation-cache "$CACHE" --json "$OUT/$name.json" "$@"
}

run_part() {
  case "$1" in
    env)
      part 60 "$PY" -c "import sys, jax, flax, optax, orbax.checkpoint, cv2, scipy, yaml, tqdm
print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__)
print(jax.devices(), (jax.local_devices()[0].memory_stats() or {}).get('bytes_limit'))"
      nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
      ;;
    w32) bench 230 w32_scan_cold --configs hrnet_w32 --dtypes bf16,fp32 --set model.scan=all ;;
    warm) bench 90 w32_scan_warm --configs hrnet_w32 --dtypes bf16,fp32 --set model.scan=all ;;
    e2e)
      part 150 "$PY" scripts/train.py --config hrnet_w32 --bf16 --dataset synthetic \
        --data-root "$WORK/synthetic_1280x720" --workdir "$WORK/e2e" --epochs 3 --workers 14 \
        --no-progress --compilation-cache "$CACHE" --set model.scan=all --set print_freq=5 \
        --set dataset.synthetic_image_size=1280,720 --set dataset.synthetic_num_train=480 \
        --set dataset.synthetic_num_valid=64
      cp "$WORK/e2e/train.log" "$WORK/e2e/metrics.jsonl" "$OUT/" 2>/dev/null || true
      ;;
    unrolled) bench 120 w32_unrolled --configs hrnet_w32 --dtypes bf16 --only train \
                --set model.scan=none ;;
    w48) bench 150 w48_scan --configs hrnet_w48 --dtypes bf16 --set model.scan=all ;;
    data)
      part 90 "$PY" scripts/bench_data.py --root "$WORK/bench_data" --num 512 --workers 16 \
        --batch 32 --image-size 1280x720
      ;;
    scans)
      bench 100 w32_scan_blocks --configs hrnet_w32 --dtypes bf16 --only train --set model.scan=blocks
      bench 100 w32_scan_modules --configs hrnet_w32 --dtypes bf16 --only train --set model.scan=modules
      ;;
    *) echo "unknown part $1 (env w32 warm e2e unrolled w48 data scans)"; return 2 ;;
  esac
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(env w32 warm e2e unrolled)
for p in "${parts[@]}"; do run_part "$p"; done
echo "=== $(date +%T) done; results in $OUT"
