#!/usr/bin/env bash
# The GPU check: CUDA tests, kernel benches and short pretraining runs, in one compact table.
#
#   scripts/device-check.sh build   # here: release CUDA binaries, stripped and xz-compressed
#                                   # -> target/device-check/bin.tar.xz (carry it, <= 64 MiB)
#   scripts/device-check.sh run     # on the GPU machine, from the repository root
#   scripts/device-check.sh all     # both, on a machine that can build and has a GPU
#   scripts/device-check.sh data    # only the synthetic COCO set (part of build)
#
# The GPU machine is offline and has no Rust toolchain worth a 10-minute Burn build, so `build`
# compiles everything here and `run` only executes the carried binaries. With the device tool:
#   run(command="scripts/device-check.sh run", carry=["target/device-check"], timeout_s=560)
#
# Settings (environment):
#   PRESET      pretraining preset                  (bicaptioning_R_50_L1_H2048)
#   ITERATIONS  iterations per training run         (100; the issue asks 100-300)
#   BATCHES     batch sizes tried, largest first    ("256 128 64": the first that fits is used)
#   PRECISIONS  training runs                       ("bf16 f32")
#   BENCH       criterion filter of the kernel bench ('^(train_step|resnet50|matmul/vocab)')
#   DEVICE      burn device                         (cuda:0)
#   DDP_DEVICES data-parallel smoke run, --devices  (cuda:0,cuda:0: two replicas on one GPU go
#               through burn-collective's registration and all-reduce; "" skips the row)
#   DDP_BATCH   its global batch                    (64)
#   DDP_ITERATIONS its iterations                   (20)
#   OUT         where logs and the table go         ($OUT if set, else target/device-check/out)
#   BUDGET      seconds the whole `run` may take    (480: every step's timeout is cut to what
#               is left, and a step with under 30 s left is skipped with a row saying so)
#
# Burn's autotune cache lives in ./target (cubecl's default for a working directory inside a
# Cargo project), so every step of one `run` shares it; `run` copies it to $OUT/autotune, and
# starts from target/device-check/autotune when a previous run's copy was put there (carry it
# with the kit to skip the tuning next time).
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET=${PRESET:-bicaptioning_R_50_L1_H2048}
ITERATIONS=${ITERATIONS:-100}
BATCHES=${BATCHES:-"256 128 64"}
PRECISIONS=${PRECISIONS:-"bf16 f32"}
BENCH=${BENCH:-'^(train_step|resnet50|matmul/vocab)'}
DEVICE=${DEVICE:-cuda:0}
DDP_DEVICES=${DDP_DEVICES-cuda:0,cuda:0}
DDP_BATCH=${DDP_BATCH:-64}
DDP_ITERATIONS=${DDP_ITERATIONS:-20}
KIT=target/device-check
OUT=${OUT:-$KIT/out}
BUDGET=${BUDGET:-480}
SCRIPT_STARTED=$(date +%s)

# step_timeout CAP -> seconds for the next step: CAP, cut to the budget left minus 10 s of
# reserve for the table; 0 when under 30 s are left (the caller skips the step).
step_timeout() {
  local left=$(( BUDGET - ($(date +%s) - SCRIPT_STARTED) - 10 ))
  ((left < 30)) && { echo 0; return; }
  echo $(( $1 < left ? $1 : left ))
}

# --- build (here) -------------------------------------------------------------------------------

executables() { sed -n 's/.*"executable":"\([^"]*\)".*/\1/p'; }

build() {
  local bin=target/device-check-bin
  # Keep a previous run's autotune cache (see the header) across rebuilds.
  local cache=""
  if [ -d "$KIT/autotune" ]; then cache=$(mktemp -d) && mv "$KIT/autotune" "$cache/"; fi
  rm -rf "$bin" "$KIT" && mkdir -p "$bin" "$KIT"
  if [ -n "$cache" ]; then mv "$cache/autotune" "$KIT/" && rmdir "$cache"; fi
  local trainer tests bench
  trainer=$(cargo build --release -p pretrain-coco --features cuda --example pretrain_coco \
    --message-format=json | executables | tail -n 1)
  tests=$(cargo test --release -p virtex-train --features cuda --test cuda --no-run \
    --message-format=json | executables | tail -n 1)
  bench=$(cargo bench -p virtex-benches --features cuda --bench kernels --no-run \
    --message-format=json | executables | tail -n 1)
  cp "$trainer" "$bin/pretrain_coco"
  cp "$tests" "$bin/cuda_tests"
  cp "$bench" "$bin/kernels"
  strip "$bin"/*
  # Three CUDA binaries are well over the 64 MiB the device tool carries; compressed they fit.
  tar -C "$bin" -cJf "$KIT/bin.tar.xz" .
  du -sh "$bin"/* "$KIT/bin.tar.xz"
  local bytes
  bytes=$(du -sb "$KIT" | cut -f1)
  if (( bytes > 64 * 1024 * 1024 )); then
    echo "error: $KIT is $bytes bytes; the device tool carries at most 64 MiB" >&2
    exit 1
  fi
}

# A COCO-layout data set with `train` and `val` images, each a hard link to one of the embedded
# sample's photographs: enough distinct entries for a batch of 256 without COCO on the (offline)
# GPU machine. Made where it runs (hard links would be copies in the carried tree).
synthetic_coco() {
  local root=$1 train=$2 val=$3 sample=crates/virtex-data/sample
  rm -rf "$root" && mkdir -p "$root/annotations" "$root/train2017" "$root/val2017"
  cp "$sample/vocab/coco_sample.model" "$root/vocab.model"
  local photos=("$sample"/train2017/*.jpg)
  write_split() {
    local split=$1 count=$2 i photo id
    {
      printf '{"images": ['
      for ((i = 0; i < count; i++)); do
        photo=${photos[i % ${#photos[@]}]}
        id=$((i + 1))
        ln -f "$photo" "$root/${split}2017/$(printf '%012d' "$id").jpg"
        ((i > 0)) && printf ','
        printf '{"id": %d, "file_name": "%012d.jpg", "width": 0, "height": 0}' "$id" "$id"
      done
      printf '], "annotations": ['
      for ((i = 0; i < count; i++)); do
        id=$((i + 1))
        ((i > 0)) && printf ','
        printf '{"id": %d, "image_id": %d, "caption": "a photograph number %d of the sample set"}' \
          "$id" "$id" $((i % ${#photos[@]}))
      done
      printf ']}\n'
    } > "$root/annotations/captions_${split}2017.json"
  }
  write_split train "$train"
  write_split val "$val"
}

# --- run (GPU machine) --------------------------------------------------------------------------

rows=()
row() { rows+=("$(printf '| %s | %s | %s |' "$1" "$2" "$3")"); }

json_numbers() { # json_numbers FIELD FILE KIND -> the field of every record of that kind
  # Non-finite values are written as strings ("NaN", "inf", "-inf").
  grep "\"kind\":\"$3\"" "$2" | sed -n "s/.*\"$1\":\"\{0,1\}\([-0-9.eE+naNinf]*\).*/\1/p"
}

train_run() { # train_run PRECISION BATCH -> 0 when it ran to the end, 124/137 on a timeout
  local precision=$1 batch=$2 dir="$OUT/runs/${precision}_b$2"
  rm -rf "$dir" "$OUT/train_${precision}_b$batch.log"
  local limit
  limit=$(step_timeout 150)
  ((limit > 0)) || return 124
  local sampler
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 \
    > "$OUT/memory_${precision}_b$batch.txt" 2>/dev/null &
  sampler=$!
  local started status=0
  started=$(date +%s)
  timeout -k 15 "$limit" "$KIT/bin/pretrain_coco" --preset "$PRESET" --device "$DEVICE" \
    --data-root "$KIT/data" --tokenizer "$KIT/data/vocab.model" --run-dir "$dir" \
    --precision "$precision" \
    --set "optim.batch_size=$batch" --set "optim.num_iterations=$ITERATIONS" --set data.vocab_size=400 \
    --set optim.warmup_steps=10 --set train.log_every=10 --set train.val_every=100000 \
    --set train.checkpoint_every=100000 --set "data.num_workers=$(nproc)" \
    > "$OUT/train_${precision}_b$batch.log" 2>&1 || status=$?
  kill "$sampler" 2>/dev/null || true
  local seconds=$(( $(date +%s) - started ))
  if ((status != 0)); then
    tail -n 5 "$OUT/train_${precision}_b$batch.log" >&2
    return "$status"
  fi
  local metrics="$dir/metrics.jsonl" first last rate peak
  first=$(json_numbers loss "$metrics" train | head -n 1 | xargs printf '%.4f')
  last=$(json_numbers loss "$metrics" train | tail -n 1 | xargs printf '%.4f')
  # img/s of the logged windows after the first (which holds autotuning and warm-up).
  rate=$(json_numbers images_per_second "$metrics" train | tail -n +2 |
    awk '{ s += $1; n++ } END { if (n) printf "%.1f", s / n; else print "?" }')
  peak=$(sort -n "$OUT/memory_${precision}_b$batch.txt" | tail -n 1)
  local step
  step=$(awk -v r="$rate" -v b="$batch" 'BEGIN { if (r > 0) printf "%.0f ms", 1000 * b / r; else print "?" }')
  row "train $PRESET $precision b$batch ×$ITERATIONS" \
    "$rate img/s, step $step, peak ${peak:-?} MiB" \
    "loss $first → $last; wall $seconds s"
}

# The data-parallel path (`--devices`): on a one-GPU machine two replicas share cuda:0, which
# runs registration, the per-step gradient all-reduce and rank 0's checkpoint exactly as two
# GPUs would, minus the NCCL copies between devices.
ddp_run() {
  local dir="$OUT/runs/ddp" log="$OUT/train_ddp.log" started status=0 limit
  rm -rf "$dir"
  limit=$(step_timeout 120)
  if ((limit == 0)); then
    row "DDP $DDP_DEVICES" "skipped" "time budget ($BUDGET s) spent"
    return
  fi
  started=$(date +%s)
  timeout -k 15 "$limit" "$KIT/bin/pretrain_coco" --preset "$PRESET" --devices "$DDP_DEVICES" \
    --data-root "$KIT/data" --tokenizer "$KIT/data/vocab.model" --run-dir "$dir" \
    --precision f32 \
    --set "optim.batch_size=$DDP_BATCH" --set "optim.num_iterations=$DDP_ITERATIONS" --set data.vocab_size=400 \
    --set optim.warmup_steps=5 --set train.log_every=5 --set train.val_every=100000 \
    --set train.checkpoint_every=100000 --set "data.num_workers=$(nproc)" \
    > "$log" 2>&1 || status=$?
  local seconds=$(( $(date +%s) - started ))
  if ((status != 0)); then
    row "DDP $DDP_DEVICES" "failed (exit $status)" "$(tail -n 2 "$log" | tr '\n' ' ')"
    return
  fi
  local metrics="$dir/metrics.jsonl" first last rate
  first=$(json_numbers loss "$metrics" train | head -n 1 | xargs printf '%.4f')
  last=$(json_numbers loss "$metrics" train | tail -n 1 | xargs printf '%.4f')
  rate=$(json_numbers images_per_second "$metrics" train | tail -n +2 |
    awk '{ s += $1; n++ } END { if (n) printf "%.1f", s / n; else print "?" }')
  row "DDP $PRESET f32 b$DDP_BATCH ×$DDP_ITERATIONS on $DDP_DEVICES" "$rate img/s" \
    "loss $first → $last; wall $seconds s"
}

run_checks() {
  mkdir -p "$OUT"
  if [ ! -x "$KIT/bin/pretrain_coco" ]; then
    [ -f "$KIT/bin.tar.xz" ] || { echo "no $KIT/bin.tar.xz: run 'scripts/device-check.sh build' first" >&2; exit 1; }
    mkdir -p "$KIT/bin" && tar -C "$KIT/bin" -xJf "$KIT/bin.tar.xz"
  fi
  [ -d "$KIT/data" ] || synthetic_coco "$KIT/data" 512 64
  local gpu
  gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1 || true)
  row "device" "$gpu" "$(date -u +%FT%TZ)"

  if [ -d "$KIT/autotune" ] && [ ! -d target/autotune ]; then
    mkdir -p target && cp -r "$KIT/autotune" target/autotune
  fi

  local status=0 started limit
  # The issue's main question first (bf16 vs f32 training), then the CUDA tests, the benches
  # and DDP; each step's timeout is cut to the budget left.
  for precision in $PRECISIONS; do
    local ran=0 batch code=0
    for batch in $BATCHES; do
      code=0
      train_run "$precision" "$batch" || code=$?
      if ((code == 0)); then ran=1; break; fi
      # A timeout (124, or 137 when -k had to kill) is not a batch that does not fit: a smaller
      # one would not help.
      ((code == 124 || code == 137)) && break
      echo "batch $batch did not run with $precision; trying a smaller one" >&2
    done
    if ((code == 124 || code == 137)) && [ ! -f "$OUT/train_${precision}_b$batch.log" ]; then
      row "train $PRESET $precision" "skipped" "time budget ($BUDGET s) spent"
    elif ((code == 124 || code == 137)); then
      row "train $PRESET $precision b$batch" "timed out" "time budget ($BUDGET s); see $OUT/train_${precision}_b$batch.log"
    elif ((!ran)); then
      row "train $PRESET $precision" "failed at every batch in '$BATCHES'" "see $OUT/train_${precision}_*.log"
    fi
  done

  started=$(date +%s)
  limit=$(step_timeout 150)
  if ((limit == 0)); then
    echo "skipped: time budget ($BUDGET s) spent" > "$OUT/cuda_tests.log"
  else
    VIRTEX_REQUIRE_CUDA=1 timeout -k 15 "$limit" "$KIT/bin/cuda_tests" --test-threads 1 \
      > "$OUT/cuda_tests.log" 2>&1 || status=$?
  fi
  row "CUDA tests" "$(grep -E '^(test result|skipped)' "$OUT/cuda_tests.log" | tail -n 1 || echo 'no result')" \
    "exit $status, $(( $(date +%s) - started )) s; $(grep -h 'max relative difference' "$OUT/cuda_tests.log" | tr '\n' ' ')"

  started=$(date +%s)
  limit=$(step_timeout 90)
  if ((limit == 0)); then
    row "kernel benches" "skipped" "time budget ($BUDGET s) spent"
    : > "$OUT/kernels.log"
  else
    VIRTEX_BENCH_DEVICE="$DEVICE" timeout -k 15 "$limit" "$KIT/bin/kernels" --bench "$BENCH" \
      > "$OUT/kernels.log" 2>&1 || status=$?
  fi
  # criterion prints "<id>\n time: [low median high]" (or both on one line for short ids).
  awk '/^[a-z_0-9]+\/[^ ]+/ { id = $1 } /time:/ && id != "" { sub(/.*time: +\[/, ""); split($0, t, " ");
       printf "%s %s %s\n", id, t[3], t[4]; id = "" }' "$OUT/kernels.log" > "$OUT/kernels.txt"
  while read -r id value unit; do row "bench $id" "$value $unit" "median (criterion)"; done < "$OUT/kernels.txt"

  [ -z "$DDP_DEVICES" ] || ddp_run

  # To reuse it next time: copy $OUT/autotune to target/device-check/autotune here.
  cp -r target/autotune "$OUT/" 2>/dev/null || true
  {
    echo "| check | result | notes |"
    echo "|---|---|---|"
    printf '%s\n' "${rows[@]}"
  } | tee "$OUT/table.md"
}

case "${1:-}" in
  build) build ;;
  data) synthetic_coco "$KIT/data" 512 64 ;;
  run) run_checks ;;
  all) build && run_checks ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
