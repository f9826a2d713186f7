#!/usr/bin/env bash
# The GPU measurements issue 7's throughput target still needs, as one device call of about
# 8 minutes at most (a task lent a GPU has 15 minutes of device time in all, start-up included).
#
# Here, on the CPU machine, once per checkout (the device machine's Python 3.12 lacks Ray and
# Hydra; isal is the PNG compressor, zlib is used without it):
#     ../shared/tools/offline-wheels.sh isal==1.9.1
# Device call 1:                carry [".whl_a"]   command: mkdir -p /tmp/whl && cp .whl_a/* /tmp/whl/
# Device call 2, right after:   carry [".whl_b"]   command: source .whl_b/install.sh && bash benchmarks/gpu_check.sh
# (timeout_s 540: the steps' limits add up to 475 s). If call 2 says the first part is missing,
# the machine went cold: repeat both.
#
# Every step writes its own log under $OUT (the device tool's folder; else the first argument,
# else /tmp/gpu_check) and has its own time limit: a step that fails or runs out is reported and
# the next one runs. The steps, most informative first:
#   1. phases  one actor without Ray, step by step, device time per character (torch.profiler),
#              pageable vs pinned copies and NCHW vs channels-last decoder side by side (--micro);
#   2. tests   every CUDA test of the project (pytest -m gpu, on the files that hold them): pinned
#              copies, uint8 crops on the device, channels-last detail decoder, cuda_wait, renderer,
#              FLAME layer, NCCL;
#   3. job12   the whole job, the 12-actor layout measured at the 10th/13th sessions (12 x 0.08
#              GPU x 1 CPU, batch 64, 2 write threads), with the CPU split by process;
#   4. job6c2  6 actors x 0.16 GPU x 2 CPUs, batch 128, 3 write threads, actor_calls=2 (each
#              actor writes one batch while the next is on its device);
#   5. job12mps  job12's layout under CUDA's Multi-Process Service (started here, stopped after;
#              skipped where the machine lacks it): without it the GPU time-slices the 12 actors'
#              contexts, with it their small kernels run side by side.
# nvidia-smi dmon (SM activity every 2 s) runs beside the jobs (dmon.log). summary.log gathers
# the lines that matter. Nothing is asserted: numbers are printed.
#
# GPU_CHECK_DRY=1 runs every step small on the CPU (the demo model, a few characters): the
# script's own check, used by tests/test_gpu_check.py; its numbers mean nothing.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-${1:-/tmp/gpu_check}}
mkdir -p "$out"
work=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
mkdir -p "$work"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
PY=${PYTHON:-python3}

if [ "${GPU_CHECK_DRY:-0}" = "1" ]; then
  dev=(--device cpu --arch demo)
  phases=(--batch-size 4 --reps 1)
  tests_limit=600
  job=(--characters 16 --unique 4 --num-gpus 0 --ray-cpus 4)
  jobs=("job12|--num-actors 1 --num-cpus-per-actor 1 --batch-size 4 --decode-batch-size 4 --write-threads 2"
        "job6c2|--num-actors 1 --num-cpus-per-actor 2 --batch-size 8 --decode-batch-size 8 --write-threads 2 --actor-calls 2")
  limit=240
else
  dev=(--device cuda --arch paper --bf16)
  phases=(--batch-size 128 --reps 2 --profile --micro)
  tests_limit=80
  job=(--characters "${GPU_CHECK_CHARACTERS:-12000}" --unique 64)
  jobs=("job12|--num-actors 12 --num-gpus 0.08 --num-cpus-per-actor 1 --batch-size 64 --decode-batch-size 64 --write-threads 2 --cpu-by-process --memory"
        "job6c2|--num-actors 6 --num-gpus 0.16 --num-cpus-per-actor 2 --batch-size 128 --decode-batch-size 64 --write-threads 3 --actor-calls 2"
        "job12mps|--num-actors 12 --num-gpus 0.08 --num-cpus-per-actor 1 --batch-size 64 --decode-batch-size 64 --write-threads 2")
  limit=95
fi

t_start=$(date +%s)
summary="$out/summary.log"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

# step NAME LIMIT_S COMMAND...: run with a time limit, log to $out/NAME.log, report how it ended.
step() {
  local name=$1 lim=$2; shift 2
  local t0; t0=$(date +%s)
  note "== $name (limit ${lim}s, at +$((t0 - t_start))s): $*"
  timeout --kill-after=10 "$lim" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  local verdict="ok"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMED OUT"
  [ $rc -ne 0 ] && [ "$verdict" = "ok" ] && verdict="FAILED (exit $rc)"
  note "   $name: $verdict after $(( $(date +%s) - t0 ))s"
  # The lines a reader needs, into the summary.
  grep -E '^(device|round|device time|  +[0-9.]+ ms/char|device -> host|detail decoder|decode:|model:|actor|job|  CPU by process|    +[0-9.]+  |  memory|    +[0-9]+ / )' \
    "$out/$name.log" >> "$summary" 2>/dev/null
  grep -E '^(FAILED|ERROR) |^[0-9]+ (passed|failed|skipped|error).* in [0-9.]+s' "$out/$name.log" | tail -n 12 \
    >> "$summary" 2>/dev/null
  if [ "$verdict" != "ok" ]; then tail -n 15 "$out/$name.log" | sed 's/^/   | /' >> "$summary"; fi
  return 0
}

{
  note "gpu_check at $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), dry=${GPU_CHECK_DRY:-0}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee -a "$summary"
  $PY -c "import os, torch, ray, pyarrow; print('torch', torch.__version__, 'ray', ray.__version__, 'pyarrow', pyarrow.__version__, 'cores', os.cpu_count())" 2>&1 | tee -a "$summary"
  $PY -c "import isal" 2>/dev/null && note "isal: present" || note "isal: missing (PNGs through zlib)"
}

dmon_pid=
if command -v nvidia-smi > /dev/null && [ "${GPU_CHECK_DRY:-0}" != "1" ]; then
  nvidia-smi dmon -s u -d 2 > "$out/dmon.log" 2>&1 &
  dmon_pid=$!
fi

# One workdir for every step: the portraits and the untrained checkpoint are made once.
step phases 110 $PY benchmarks/bm_actor_phases.py "${dev[@]}" "${phases[@]}" --workdir "$work"
if [ "${GPU_CHECK_DRY:-0}" = "1" ]; then  # the CUDA tests only skip on the CPU: one file shows the step works
  step tests "$tests_limit" $PY -m pytest -q -p no:cacheprovider -m gpu tests/generation/test_transfer.py
else
  # Only the files that hold GPU tests: collecting every test module would import packages the
  # device machine lacks (pygltflib, duckdb, ...), and a collection error stops pytest.
  mapfile -t gpu_files < <(grep -rl --include='test_*.py' "pytest.mark.gpu" tests | sort)
  step tests "$tests_limit" $PY -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m gpu \
    "${gpu_files[@]}"
fi
for j in "${jobs[@]}"; do
  name=${j%%|*}
  # shellcheck disable=SC2206 - the layout's flags are words on purpose
  flags=(${j#*|})
  mps=0
  if [[ $name == *mps ]]; then  # CUDA's Multi-Process Service: the actors' kernels share the GPU at once
    if ! command -v nvidia-cuda-mps-control > /dev/null; then
      note "== $name: skipped (no nvidia-cuda-mps-control on this machine)"; continue
    fi
    export CUDA_MPS_PIPE_DIRECTORY="$work/mps/pipe" CUDA_MPS_LOG_DIRECTORY="$work/mps/log"
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if ! nvidia-cuda-mps-control -d > "$out/mps_start.log" 2>&1; then
      note "== $name: skipped (the MPS daemon did not start: $(head -c 300 "$out/mps_start.log"))"
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; continue
    fi
    mps=1
  fi
  step "$name" "$limit" $PY benchmarks/bm_generate.py "${dev[@]}" "${job[@]}" "${flags[@]}" --stages job \
    --workdir "$work"
  rm -rf "$work/out"  # a job's outputs (~1.4 MB per character: ~17 GB for 12,000) before the next one
  if [ $mps = 1 ]; then
    echo quit | nvidia-cuda-mps-control > /dev/null 2>&1
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
done

[ -n "$dmon_pid" ] && kill "$dmon_pid" 2> /dev/null
note "gpu_check done in $(( $(date +%s) - t_start ))s; logs in $out"
