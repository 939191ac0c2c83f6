#!/usr/bin/env bash
# Every GPU measurement of bench/RESULTS.md in one time-boxed batch, for a short device lease.
#   bash bench/run_device.sh OUT_DIR [STEP ...]      (steps: tests dit480 profile dit720 memory pipeline attention
#                                                     vace load; default: all, in that order)
# Run from the repository root with the pack importable as `wan_express` and a ComfyUI checkout in $COMFYUI_DIR
# (core's Wan DiT for dit_forward.py; without it the core variants are left out). Each step has its own time limit
# (seconds, overridable as LIMIT_<step>=N), logs to OUT_DIR/<step>.log and writes its JSON there as it goes, so a
# step cut by its limit or a lease that ends keeps what finished. OUT_DIR/steps.log says when each step ended, and how.
set -u
out=$(mkdir -p "$1" && cd "$1" && pwd); shift
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(tests dit480 profile dit720 memory pipeline attention vace load)
root=$(cd "$(dirname "$0")/.." && pwd)
core=(); [ -n "${COMFYUI_DIR:-}" ] && core=(--comfyui "$COMFYUI_DIR")
export PYTHONUNBUFFERED=1

run() {  # run NAME DEFAULT_LIMIT COMMAND...
  local name=$1 limit_var="LIMIT_$1" limit=$2; shift 2
  limit=${!limit_var:-$limit}
  echo "$(date +%T) start $name (limit ${limit} s)" >> "$out/steps.log"
  (cd "$root/bench" && timeout -k 10 "$limit" "$@") > "$out/$name.log" 2>&1
  echo "$(date +%T) end $name rc=$?" >> "$out/steps.log"
}

for step in "${steps[@]}"; do
  case $step in
    tests) run tests 240 python3 -m pytest -q -p no:cacheprovider -rfE -o addopts="" --rootdir "$root" \
             "$root"/tests/test_attention_gpu.py "$root"/tests/test_fused_gpu.py "$root"/tests/test_kernels_gpu.py \
             "$root"/tests/test_dit_cuda.py "$root"/tests/test_streaming_cuda.py "$root"/tests/test_attention_triton.py \
             "$root"/tests/test_kernels_triton.py "$root"/tests/test_lora_apply.py "$root"/tests/test_sampling_loop.py \
             "$root"/tests/test_attention_selection.py ;;
    dit480) run dit480 420 python3 dit_forward.py "${core[@]}" --sizes 480p --repeats 2 --compile-mode block \
              --json "$out/dit_forward_480p.json" ;;
    profile) run profile 90 python3 profile_forward.py --json "$out/profile_forward.json" ;;
    dit720) run dit720 420 python3 dit_forward.py "${core[@]}" --sizes 720p --repeats 2 --compile-mode block \
              --json "$out/dit_forward_720p.json" --variants "core bf16" "ours fp8 eager" "ours fp8 compiled" \
              "ours int8 eager" "reference bf16 compiled" ;;
    memory) run memory 330 python3 memory.py --sizes 480p 720p --repeats 2 --json "$out/memory.json" \
              --snapshot /tmp/wan_express_snapshot.pickle ;;
    pipeline) run pipeline 120 python3 pipeline.py --dit fp8 --repeats 1 --json "$out/pipeline.json" ;;
    attention) run attention 200 python3 attention.py --sweep --repeats 5 --json "$out/attention.json" ;;
    vace) run vace 200 python3 vace_forward.py --repeats 2 --json "$out/vace_forward.json" ;;
    load) run load 300 python3 load_time.py --json "$out/load_time.json" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
