#!/usr/bin/env bash
# One script for anyone with an NVIDIA GPU: configures and builds ellipse with the CUDA backend, runs the
# CUDA tests (every op against the CPU, the fused attention against the explicit path) and, where NCCL and MPI
# are installed, the NCCL collectives and a `train gpt` through NCCL on one rank against the same run without it,
# runs the Python package's CUDA tests where the module builds (nanobind importable by the build's Python), times
# training steps of ellipse and PyTorch on the same GPU in the same run, optionally runs the full ViT study on the
# GPU, and prints a short table last.
#
#   tools/gpu-check.sh [--build DIR] [--arch native] [--steps 20] [--warmup 5] [--skip-tests] [--skip-bench]
#                      [--study-data DIR [--study-out DIR] [--study-seeds 3]]
#
# --arch is CMAKE_CUDA_ARCHITECTURES: `native` (the default) builds for the GPUs of this machine.
# --study-data DIR runs `ellipse study vit --preset full --device cuda --seeds N` on the Fashion-MNIST files in
# DIR, its three kinds (standard, elliptical, elliptical-random) as three processes side by side on the GPU (small
# trainings share one card), then the call that writes the report; --study-out is its output folder (default:
# BUILD/study-vit-full), --study-seeds N its seeds (default 3). A study stopped part-way resumes from its last
# epoch when the script runs again with the same folder.
#
# PyTorch (with CUDA) is the peer of the benchmark: python3 must import torch (override with PYTHON=...).
# The build needs what the README lists (fmt, nlohmann-json, zlib, CLI11, doctest, OpenBLAS) and nvcc.
set -uo pipefail
cd "$(dirname "$0")/.."
build=build-gpu arch=native steps=20 warmup=5 tests=1 bench=1 study_data='' study_out='' study_seeds=3
usage="usage: $0 [--build DIR] [--arch SM] [--steps N] [--warmup N] [--skip-tests] [--skip-bench]"
usage+=" [--study-data DIR [--study-out DIR] [--study-seeds N]]"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --skip-tests) tests=0; shift ;;
    --skip-bench) bench=0; shift ;;
    --study-data) study_data=$2; shift 2 ;;
    --study-out) study_out=$2; shift 2 ;;
    --study-seeds) study_seeds=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
study_out=${study_out:-$build/study-vit-full}
test_programs=(test_ops test_attention test_tensor test_gpt test_device)
nccl_programs=(test_dist)
((tests == 1)) || test_programs=() nccl_programs=()
python=${PYTHON:-python3}
log_dir=${OUT:-$build}/gpu-check
mkdir -p "$log_dir"
summary=()

card=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
echo "gpu-check: ${card:-no GPU visible to nvidia-smi}"

start=$SECONDS
# The Python module is built for the interpreter that has PyTorch, so that its tests exchange tensors with it.
if ! cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DELLIPSE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
       -DPython_EXECUTABLE="$(command -v "$python")" >"$log_dir/configure.log" 2>&1 ||
   ! cmake --build "$build" -j"$(nproc)" --target ellipse_cli "${test_programs[@]}" "${nccl_programs[@]}" \
       >"$log_dir/build.log" 2>&1; then
  for log in "$log_dir/configure.log" "$log_dir/build.log"; do [[ -f "$log" ]] && tail -40 "$log"; done
  echo "gpu-check: the build failed (logs in $log_dir)"
  exit 1
fi
summary+=("| build | ok | $((SECONDS - start)) s |")

# The CUDA tests: each program lists the devices it ran on; a skipped CUDA device is a failure here.
for test in "${test_programs[@]}"; do
  start=$SECONDS
  "$build/tests/$test" >"$log_dir/$test.log" 2>&1
  status=$?
  if grep -q "SKIPPED device cuda" "$log_dir/$test.log"; then status="skipped-cuda"; fi
  result=$([[ "$status" == 0 ]] && echo ok || echo "FAILED ($status)")
  summary+=("| $test | $result | $((SECONDS - start)) s |")
  [[ "$result" == ok ]] || grep -E "ERROR|FAILED|SKIPPED|threw" "$log_dir/$test.log" | head -40
done

# NCCL (built when the CUDA backend, MPI and NCCL are all found): its collectives on this machine's GPUs (one rank,
# then one rank per GPU when there are several), and `train gpt` on one rank through NCCL against the same run
# without it, whose losses in metrics.jsonl must be the same numbers.
if ((tests == 1)); then
  start=$SECONDS
  if ! grep -q "ellipse: NCCL ON" "$log_dir/configure.log"; then
    summary+=("| nccl | skipped: built without NCCL ($(grep -o 'ellipse: NCCL.*' "$log_dir/configure.log")) | 0 s |")
  else
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    rank_counts=(1)
    ((gpus > 1)) && rank_counts+=("$gpus")
    result=ok
    for ranks in "${rank_counts[@]}"; do
      mpirun -n "$ranks" "$build/tests/test_dist" -tc='*NCCL*' >"$log_dir/test_dist_nccl$ranks.log" 2>&1
      status=$?
      if ((status != 0)) || grep -q "SKIPPED NCCL" "$log_dir/test_dist_nccl$ranks.log"; then
        result="FAILED on $ranks rank(s) (status $status)"
        grep -E "ERROR|FAILED|SKIPPED|threw" "$log_dir/test_dist_nccl$ranks.log" | head -40
      fi
    done
    text=$log_dir/nccl-text.txt
    for _ in $(seq 300); do echo "the quick brown fox jumps over the lazy dog; a lazy dog sleeps."; done >"$text"
    train=(train gpt --text "$text" --config gpt-tiny --attn elliptical --steps 60 --eval-every 20 --batch 8
           --device cuda)
    rm -rf "$log_dir/gpt-plain" "$log_dir/gpt-nccl1"
    # NCCL_DEBUG=VERSION makes NCCL print its version when a communicator starts: proof that the run used it.
    "$build/ellipse" "${train[@]}" --out "$log_dir/gpt-plain" >"$log_dir/gpt-plain.log" 2>&1 &&
      NCCL_DEBUG=VERSION mpirun -n 1 "$build/ellipse" "${train[@]}" --out "$log_dir/gpt-nccl1" \
        >"$log_dir/gpt-nccl1.log" 2>&1
    status=$?
    losses() { grep -oE '"(train|val)_loss": ?[^,}]*' "$1/metrics.jsonl"; }
    if ((status != 0)); then
      result="FAILED: train gpt (status $status; gpt-plain.log, gpt-nccl1.log)"
    elif ! grep -q "NCCL version" "$log_dir/gpt-nccl1.log"; then
      result="FAILED: train gpt under mpirun -n 1 did not start NCCL (gpt-nccl1.log)"
    elif ! diff <(losses "$log_dir/gpt-plain") <(losses "$log_dir/gpt-nccl1") >"$log_dir/gpt-nccl1.diff"; then
      result="FAILED: the losses of train gpt through NCCL differ (gpt-nccl1.diff)"
    else
      echo "gpu-check: train gpt through NCCL on one rank logged the same $(losses "$log_dir/gpt-plain" | wc -l) losses"
    fi
    summary+=("| nccl (test_dist, train gpt 1 rank) | $result | $((SECONDS - start)) s |")
  fi
fi

# The Python package on the GPU: device tensors, DLPack at the same address (with PyTorch's tensors too), training.
if ((tests == 1)); then
  start=$SECONDS
  if ! grep -q "ellipse: Python module ON" "$log_dir/configure.log"; then
    why=$(grep -o 'ellipse: Python module.*' "$log_dir/configure.log")
    summary+=("| python (test_cuda.py) | skipped: $why | 0 s |")
  elif ! cmake --build "$build" -j"$(nproc)" --target _ellipse >"$log_dir/python-build.log" 2>&1; then
    result="FAILED: the module did not build (python-build.log)"
    summary+=("| python (test_cuda.py) | $result | $((SECONDS - start)) s |")
  else
    module_python=$(grep -o 'ellipse: Python module ON for [^ ]*' "$log_dir/configure.log" | awk '{print $6}')
    PYTHONPATH="$build/python" "$module_python" -m pytest -q -p no:cacheprovider -rs python/tests/test_cuda.py \
      >"$log_dir/python-cuda.log" 2>&1
    status=$?
    if ((status != 0)) || grep -q "SKIPPED" "$log_dir/python-cuda.log"; then
      result="FAILED (status $status; python-cuda.log)"
      tail -n 30 "$log_dir/python-cuda.log"
    else
      result="ok ($(grep -oE '[0-9]+ passed' "$log_dir/python-cuda.log"))"
    fi
    summary+=("| python (test_cuda.py) | $result | $((SECONDS - start)) s |")
  fi
fi

rows=()
if [[ $bench == 1 ]]; then
  # config:attn[:flag], alternating ellipse and PyTorch per configuration.
  for entry in gpt-s:standard gpt-s:elliptical vit-s:standard vit-s:elliptical gpt-m:standard gpt-m:elliptical \
               gpt-m:standard:tf32; do
    IFS=: read -r config attn mode <<<"$entry"
    extra=()
    [[ "$mode" == tf32 ]] && extra=(--tf32)
    ours=$("$build/ellipse" bench --device cuda --config "$config" --attn "$attn" --steps "$steps" \
           --warmup "$warmup" "${extra[@]}" 2>>"$log_dir/bench.log" | tail -1)
    theirs=$("$python" bench/torch_bench.py --device cuda --config "$config" --attn "$attn" --steps "$steps" \
             --warmup "$warmup" "${extra[@]}" 2>>"$log_dir/bench.log" | tail -1)
    echo "ellipse $entry $ours" >>"$log_dir/bench.jsonl"
    echo "pytorch $entry $theirs" >>"$log_dir/bench.jsonl"
    rows+=("$("$python" - "$entry" "$ours" "$theirs" <<'PY'
import json, sys
entry, ours, theirs = sys.argv[1], sys.argv[2], sys.argv[3]
def parse(text):
    try:
        return json.loads(text)
    except ValueError:
        return None
a, b = parse(ours), parse(theirs)
if not a or not b:
    print(f"| {entry} | failed: see bench.log | | | | |")
else:
    print(f"| {entry} | {a['step_ms']:.2f} | {b['step_ms']:.2f} | {a['step_ms'] / b['step_ms']:.3f} | "
          f"{a.get('peak_gpu_mib', float('nan')):.0f} | {b.get('peak_gpu_mib', float('nan')):.0f} |")
PY
)")
  done
fi

if [[ -n "$study_data" ]]; then
  start=$SECONDS
  kinds=(standard elliptical elliptical-random)
  study=("$build/ellipse" study vit --preset full --device cuda --data "$study_data" --out "$study_out"
         --seeds "$study_seeds" --kinds "$(IFS=,; echo "${kinds[*]}")")
  # A GPU in an exclusive compute mode takes one process at a time: then the kinds train one after the other.
  exclusive=0
  compute_mode=$(nvidia-smi --query-gpu=compute_mode --format=csv,noheader 2>/dev/null | head -1)
  [[ "$compute_mode" == Exclusive* ]] && exclusive=1
  pids=() statuses=()
  for kind in "${kinds[@]}"; do
    "${study[@]}" --only "$kind" >"$log_dir/study-$kind.log" 2>&1 &
    if ((exclusive == 1)); then
      wait $!
      statuses+=($?)
    else
      pids+=($!)
    fi
  done
  for pid in ${pids[@]+"${pids[@]}"}; do  # (empty in exclusive mode; old bash's set -u rejects "${pids[@]}")
    wait "$pid"
    statuses+=($?)
  done
  summary_status=skipped
  if [[ "${statuses[*]}" == "0 0 0" ]]; then
    "${study[@]}" >"$log_dir/study.log" 2>&1
    summary_status=$?
  fi
  if [[ "$summary_status" == 0 ]]; then
    result="ok: $study_out/report.md"
  else
    result="FAILED (exit status of ${kinds[*]}: ${statuses[*]}; report: $summary_status)"
    tail -n 20 "$log_dir"/study*.log
  fi
  summary+=("| study vit --preset full --seeds $study_seeds | $result | $((SECONDS - start)) s |")
fi

echo
echo "gpu-check on ${card:-?}"
echo "| stage | result | time |"
echo "| --- | --- | ---: |"
printf '%s\n' "${summary[@]}"
if [[ ${#rows[@]} -gt 0 ]]; then
  echo
  echo "median step ms over $steps steps after $warmup warm-up; ratio = ellipse / PyTorch (below 1: faster)"
  echo "| config:attn | ellipse ms | PyTorch ms | ratio | ellipse peak MiB | PyTorch peak MiB |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${rows[@]}"
fi
