#!/usr/bin/env bash
# Every GPU figure in one run of at most 10 minutes on a GPU machine (docs/benchmarks.md, "GPU:
# how to run"). Each section runs within its own time box (timeout), so one that overruns costs
# only its box; each writes its JSON under $WORK/new, and after every section everything so far is
# bundled into $OUT in four files, so a run cut off by its time limit still brings its figures back:
# gpu-results.json, benchmarks.md (the page rendered with the new figures), log.txt, nvidia-smi.csv.
# The paths section also checks what only a GPU runs (bench/gpu_paths.py: the precision auto
# picks, fp16 with its scaler, adamw and silu, a compiled step compiled once) into
# $OUT/paths-<device>.json; a failed check is its section's exit 1.
#
#   GPU:     bash bench/gpu.sh          (data/cifar10-jpeg.npz beside the tree: bench/gpu_data.py)
#   here:    python bench/gpu_collect.py import <OUT>/gpu-results.json
#   CPU:     BENCH_TINY=1 OUT=$(mktemp -d) bash bench/gpu.sh     (tiny settings, no compile)
#
# Only torch, torchvision, numpy and Pillow are needed (the GPU machine has no MLflow); the data
# is the carried pack (bench/gpu_data.py), else synthetic images (throughput only).
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d /tmp/gpu-bench-XXXX)
mkdir -p "$WORK/new" "$OUT"
export CIFAR_MLFLOW_CACHE="$WORK/cache"  # the decoded images, made once by the data section
LOG="$OUT/log.txt"
PACK=data/cifar10-jpeg.npz

section() {  # NAME BOX_SECONDS COMMAND...: run it within its box, note when and how it ended
  local name=$1 box=$2
  shift 2
  local start
  start=$(date +%s.%N)
  echo "=== $name (box ${box} s) $(date -u +%T)" | tee -a "$LOG"
  timeout -s INT -k 10 "$((box * BOX_SCALE))" "$@" >>"$LOG" 2>&1
  local code=$?
  printf '{"section": "%s", "box_seconds": %s, "start": %s, "end": %s, "exit": %s}\n' \
    "$name" "$box" "$start" "$(date +%s.%N)" "$code" >>"$WORK/sections.jsonl"
  "$PYTHON" bench/gpu_collect.py bundle "$WORK" "$OUT" >>"$LOG" 2>&1
}

skip() {  # NAME REASON
  printf '{"section": "%s", "box_seconds": 0, "start": 0, "end": 0, "exit": null, "skipped": "%s"}\n' \
    "$1" "$2" >>"$WORK/sections.jsonl"
}

if [ "${BENCH_TINY:-0}" = 1 ]; then  # seconds per section on a CPU: the script's own test
  DEVICE=cpu
  BOX_SCALE=8  # measured: 4 minutes in all on 2 cores at load 10-17
  SMALL=(--batch-size 10 --train-limit 20 --test-limit 10)
  THROUGHPUT=(--steps 1 --rounds 1 --warmup 0 --workers 0)
  RECIPE=(--epochs 2 --ghost-epochs 2)
  ACCURACY=(--epochs 1 --workers 0)
  RUNS=(--ks 1,2 --seconds 1 --warmup-steps 1 --block-steps 1)
  PROFILE=(--steps 2 --warmup 1)
  PATHS=(--train-limit 20 --test-limit 10 --batch-size 10 --epochs 1)  # one step each
  CHECKPOINT=(--rounds 1)
  SYNTHETIC=(--train 100 --test 50)
else
  # Boxes from the expected cost (ResNet-18's 40 epochs: 6.7 PFLOP, ~25 s at 30-40 % of an
  # H200's bf16 peak; compiling a model: about a minute) and summing to 565 s of a call's 600.
  DEVICE=cuda
  BOX_SCALE=1
  SMALL=()
  THROUGHPUT=(--workers 4)
  RECIPE=(--time-limit 50)  # per model, after at least 2 epochs; the rest extrapolated
  ACCURACY=(--epochs 5 --workers 4 --train-limit 50000 --test-limit 10000)
  RUNS=(--ks 1,2,4,8 --seconds 4)
  PROFILE=()
  PATHS=()
  CHECKPOINT=(--rounds 2)
  SYNTHETIC=()
fi
RESULTS=(--results "$WORK/new")
BENCH=(--device "$DEVICE" "${RESULTS[@]}" --doc "$WORK/scratch.md")

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
    -lms 500 >"$OUT/nvidia-smi.csv" 2>/dev/null &
  SAMPLER=$!
  nvidia-smi >>"$LOG" 2>&1
fi

if [ -f "$PACK" ] && [ "${BENCH_TINY:-0}" != 1 ]; then
  DATA="$WORK/cifar10-jpeg"
  section data 30 bash -c "'$PYTHON' bench/gpu_data.py unpack '$PACK' '$DATA' && '$PYTHON' -c \
    'import sys; from cifar_mlflow.core.data import load_cifar10; load_cifar10(sys.argv[1], 0, 0)' '$DATA'"
  REAL=1
else
  DATA="$WORK/cifar10-synthetic"
  section data 30 "$PYTHON" bench/gpu_data.py synthetic "$DATA" "${SYNTHETIC[@]}"
  REAL=0
fi

TRAIN=(bench/bench_train.py "${BENCH[@]}" --data-dir "$DATA" "${SMALL[@]}")
section recipe-eager 70 "$PYTHON" "${TRAIN[@]}" --recipe "${RECIPE[@]}"
if [ "$DEVICE" = cuda ]; then  # cold compile first: its time counts in the recipe's figure
  section recipe-compiled 145 "$PYTHON" "${TRAIN[@]}" --recipe --compile "${RECIPE[@]}"
else
  skip recipe-compiled "compiling on a CPU takes minutes (docs/benchmarks.md)"
fi
section throughput-eager 45 "$PYTHON" "${TRAIN[@]}" "${THROUGHPUT[@]}"
if [ "$DEVICE" = cuda ]; then
  section throughput-compiled 55 "$PYTHON" "${TRAIN[@]}" --compile "${THROUGHPUT[@]}"
else
  skip throughput-compiled "compiling on a CPU takes minutes (docs/benchmarks.md)"
fi
if [ "$REAL" = 1 ] || [ "${BENCH_TINY:-0}" = 1 ]; then
  section accuracy 60 "$PYTHON" "${TRAIN[@]}" --accuracy --models resnet18 "${ACCURACY[@]}"
else
  skip accuracy "no CIFAR-10 pack carried ($PACK): synthetic images have no accuracy to check"
fi
section runs-per-gpu 45 "$PYTHON" bench/runs_per_gpu.py --device "$DEVICE" "${RESULTS[@]}" \
  --data-dir "$DATA" "${SMALL[@]}" "${RUNS[@]}"
section checkpoint 10 "$PYTHON" bench/bench_checkpoint.py --device "$DEVICE" "${RESULTS[@]}" \
  --doc "$WORK/scratch.md" "${CHECKPOINT[@]}"
section profile 15 "$PYTHON" bench/profile_kernels.py --device "$DEVICE" "${RESULTS[@]}" \
  --data-dir "$DATA" "${SMALL[@]}" "${PROFILE[@]}"
section paths 90 "$PYTHON" bench/gpu_paths.py --device "$DEVICE" --data-dir "$DATA" \
  --out "$OUT/paths-$DEVICE.json" "${PATHS[@]}"

[ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
"$PYTHON" bench/gpu_collect.py bundle "$WORK" "$OUT" >>"$LOG" 2>&1
# What the call's reply shows (its last 12,000 characters): the sections, then the new tables.
cat "$WORK/sections.jsonl"
sed -n '/generated by bench\/bench_train.py: begin/,/generated by bench\/bench_train.py: end/p' \
  "$OUT/benchmarks.md" | grep -v '^$' | tail -c 10000
