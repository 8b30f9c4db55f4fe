#!/usr/bin/env bash
# A rank killed (SIGKILL) in the middle of `mpirun -n 2 ellipse train gpt` ends the whole job within 30 s with a
# non-zero status, and `--resume` under mpirun then completes the run from its last checkpoint.
#   Usage: tests/mpi_kill_resume.sh ELLIPSE MPIEXEC
set -uo pipefail
ellipse=$1
mpiexec=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for _ in $(seq 300); do printf 'the cat sat on the mat; a dog sat on a log. '; done >"$dir/text.txt"
train=(train gpt --text "$dir/text.txt" --config gpt-tiny --batch 8 --steps 3000 --eval-every 20 --json)

"$mpiexec" -n 2 --oversubscribe "$ellipse" "${train[@]}" --out "$dir/run" >"$dir/first.log" 2>&1 &
job=$!
for _ in $(seq 600); do  # the first checkpoint, within 60 s
  [[ -s "$dir/run/train_state.safetensors" ]] && break
  sleep 0.1
done
[[ -s "$dir/run/train_state.safetensors" ]] || { echo "no checkpoint within 60 s"; cat "$dir/first.log"; exit 1; }
victim=$(pgrep -P "$job" -f "ellipse train gpt" | head -n 1)
[[ -n "$victim" ]] || { echo "no rank process under mpiexec $job"; exit 1; }
kill -9 "$victim"
killed_at=$SECONDS
wait "$job"
status=$?
took=$((SECONDS - killed_at))
echo "job ended with status $status, $took s after a rank was killed"
((status != 0)) || { echo "the job ended with status 0"; exit 1; }
((took < 30)) || { echo "the job took $took s to end"; exit 1; }

"$mpiexec" -n 2 --oversubscribe "$ellipse" "${train[@]}" --resume "$dir/run" >"$dir/resume.log" 2>&1 ||
  { echo "the resumed run failed:"; cat "$dir/resume.log"; exit 1; }
last=$(tail -n 1 "$dir/run/metrics.jsonl")
echo "resumed run's last metrics line: $last"
[[ "$last" == '{"step":3000,'* ]] || { echo "the resumed run did not reach step 3000"; exit 1; }
