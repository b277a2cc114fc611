#!/usr/bin/env bash
# The pending GPU measurements of the training step (issue 3's 1M examples/s target), in one run, for a
# session with the device machine. From the repository root:
#
#   PYTHONPATH=$PWD bash bench/gpu_session.sh OUT_DIR [STEP ...]
#
# STEP is any of: sparse (dense vs sparse tables at 1M and 3M items), compiled (the 500m config as is),
# sparse_fit (fit vs bare with sparse tables), cudagraphs (compile_mode reduce-overhead); default all.
# (The loss step, dense vs the previous sparse accidental-hit mask, was retired with bench/bench_loss.py.)
# Every result is a section of OUT_DIR/benchmarks.md (merge it into docs/benchmarks.md) plus a log.
# Environment overrides, for a smoke run on a CPU: ACCEL (gpu), PRESET (500m), WORKERS (12),
# ROWS (8000000), USERS (40000), ITEMS ("1000000 3000000"), STEPS (80), WARMUP (10).
set -euo pipefail
out=${1:?usage: bench/gpu_session.sh OUT_DIR [STEP ...]}
shift
steps=${*:-sparse compiled sparse_fit cudagraphs}
accel=${ACCEL:-gpu} preset=${PRESET:-500m} workers=${WORKERS:-12}
rows=${ROWS:-8000000} users=${USERS:-40000} items=${ITEMS:-"1000000 3000000"}
timed=${STEPS:-80} warmup=${WARMUP:-10}
work=runs/gpu-session
mkdir -p "$out"
first_items=${items%% *}
data=$work/items-$first_items/prepared  # made by the sparse step (or here, when it is skipped)
common=(--preset "$preset" --accelerator "$accel" --workers "$workers" --out "$out/benchmarks.md")
# bench_train makes the same data where the sparse step did not run first
train=(--data "$data" --workdir "$work/items-$first_items" --rows "$rows" --users "$users" --items "$first_items"
       --warmup "$warmup" --steps "$timed")

run() {  # name, command...: time it, keep its output
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" 2>&1 | tee "$out/$name.log" | grep -E "examples/s|host sync|wrote|Error|error" || true
  echo "== $name: $((SECONDS - start)) s"
}

for step in $steps; do
  case $step in
    sparse)
      # shellcheck disable=SC2086  # ITEMS is a list
      run sparse python bench/bench_sparse_tables.py "${common[@]}" --workdir "$work" --rows "$rows" \
        --users "$users" --items $items --warmup "$warmup" --steps "$timed" ;;
    compiled)
      run compiled python bench/bench_train.py "${common[@]}" "${train[@]}" --compile \
        --section "bench_train_${accel}_compiled" ;;
    sparse_fit)
      run sparse_fit python bench/bench_train.py "${common[@]}" "${train[@]}" --sparse-embeddings \
        --section "bench_train_${accel}_sparse" ;;
    cudagraphs)
      run cudagraphs python bench/bench_train.py "${common[@]}" "${train[@]}" --compile \
        --compile-mode reduce-overhead --section "bench_train_${accel}_cudagraphs" ;;
    *) echo "unknown step $step (sparse, compiled, sparse_fit, cudagraphs)" >&2; exit 2 ;;
  esac
done
