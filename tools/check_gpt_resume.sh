#!/usr/bin/env bash
# Exact resumption: trains gpt-s for STEPS steps in one run, and again as STEPS/2 steps (--stop-after)
# followed by --resume, then checks that both runs logged identical losses and wrote byte-identical
# checkpoints. Usage (from the repository root): tools/check_gpt_resume.sh   (TEXT=path STEPS=n)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
text=${TEXT:-../shared/data/tinyshakespeare.txt}
steps=${STEPS:-200}
half=$((steps / 2))
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
common=(train gpt --text "$text" --steps "$steps" --eval-every 50 --seed 7)
build/ellipse "${common[@]}" --out "$scratch/once" >/dev/null
build/ellipse "${common[@]}" --out "$scratch/split" --stop-after "$half" >/dev/null
build/ellipse "${common[@]}" --resume "$scratch/split" >/dev/null
strip_timing() { /usr/bin/python3 -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line); print(r["step"], repr(r["train_loss"]), repr(r["val_loss"]), repr(r["lr"]))' "$1"; }
echo "one run of $steps steps:"; strip_timing "$scratch/once/metrics.jsonl"
echo "$half + $half steps with --resume:"; strip_timing "$scratch/split/metrics.jsonl"
if diff <(strip_timing "$scratch/once/metrics.jsonl") <(strip_timing "$scratch/split/metrics.jsonl") >/dev/null &&
   cmp -s "$scratch/once/model.safetensors" "$scratch/split/model.safetensors"; then
  echo "resume: identical losses and byte-identical model.safetensors"
else
  echo "resume: the runs differ" >&2
  exit 1
fi
