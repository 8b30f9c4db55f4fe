#!/usr/bin/env bash
# ellipse vs PyTorch, one training step (zero grads, forward, cross-entropy, backward, AdamW), timed in
# the same run: each round runs every configuration once with ellipse and once with PyTorch, alternating,
# so that load from other processes falls on both. Prints per configuration the medians over the rounds
# of each side's median step time, their ratio (ellipse / PyTorch; below 1 is faster) and peak RSS, then
# for each model timed with both attention kinds the ratio elliptical / standard on each side.
#
#   bench/compare_torch.sh [--rounds 5] [--steps 5] [--warmup 2] [--build build] [--configs "gpt-s:standard ..."]
#
# Both sides get the same threads (all cores: OpenMP's default for ellipse, torch.set_num_threads for
# PyTorch) and idle OpenMP workers that sleep (OMP_WAIT_POLICY=passive, which the ellipse program sets for
# itself; libgomp's spinning default slows PyTorch 2x on a busy machine). PyTorch is Debian's
# python3-torch at /usr/bin/python3 (override with PYTHON=...).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5 steps=5 warmup=2 build=build
configs="gpt-s:standard gpt-s:elliptical vit-s:standard vit-s:elliptical gpt-m:standard:8 gpt-m:elliptical:8"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--steps N] [--warmup N] [--build DIR] [--configs \"config:attn[:batch] ...\"]" >&2
       exit 2 ;;
  esac
done
python=${PYTHON:-/usr/bin/python3}
export OMP_WAIT_POLICY=passive
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for ((round = 1; round <= rounds; ++round)); do
  for entry in $configs; do
    IFS=: read -r config attn batch <<<"$entry"
    batch_flag=()
    [[ -n "${batch:-}" ]] && batch_flag=(--batch "$batch")
    echo "round $round/$rounds: $config $attn ${batch:+batch $batch}" >&2
    # (assigned first, so that a failing run stops the script)
    line=$("$build"/ellipse bench --config "$config" --attn "$attn" --steps "$steps" --warmup "$warmup" "${batch_flag[@]}")
    echo "ellipse $entry $line" >>"$results"
    line=$("$python" bench/torch_bench.py --config "$config" --attn "$attn" --steps "$steps" --warmup "$warmup" \
      "${batch_flag[@]}")
    echo "pytorch $entry $line" >>"$results"
  done
done
python3 - "$results" "$rounds" "$steps" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    impl, entry, text = line.split(" ", 2)
    runs.setdefault(entry, {}).setdefault(impl, []).append(json.loads(text))
print(f"rounds: {sys.argv[2]}, timed steps per run: {sys.argv[3]}; ratio = ellipse / PyTorch of the medians")
print("| config | attn | batch | ellipse step ms | PyTorch step ms | ratio | ellipse peak RSS MiB | PyTorch peak RSS MiB |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for entry, sides in runs.items():
    med = {impl: statistics.median(r["step_ms"] for r in rs) for impl, rs in sides.items()}
    rss = {impl: max(r["peak_rss_mib"] for r in rs) for impl, rs in sides.items()}
    first = sides["pytorch"][0]  # the same configuration; `ellipse bench` does not print the batch
    print(f"| {first['config']} | {first['attn']} | {first['batch']} | {med['ellipse']:.1f} | {med['pytorch']:.1f} | "
          f"{med['ellipse'] / med['pytorch']:.3f} | {rss['ellipse']:.0f} | {rss['pytorch']:.0f} |")

# What elliptical attention costs over standard, per configuration that ran both, on each side.
by_model = {}
for entry, sides in runs.items():
    config, attn, *batch = entry.split(":")
    by_model.setdefault((config, tuple(batch)), {})[attn] = sides
pairs = {key: kinds for key, kinds in by_model.items() if {"standard", "elliptical"} <= kinds.keys()}
if pairs:
    print()
    print("| config | batch | ellipse elliptical / standard | PyTorch elliptical / standard |")
    print("| --- | ---: | ---: | ---: |")
    for (config, _), kinds in pairs.items():
        ratio = {impl: statistics.median(r["step_ms"] for r in kinds["elliptical"][impl]) /
                 statistics.median(r["step_ms"] for r in kinds["standard"][impl]) for impl in ("ellipse", "pytorch")}
        print(f"| {config} | {kinds['standard']['pytorch'][0]['batch']} | {ratio['ellipse']:.3f} | "
              f"{ratio['pytorch']:.3f} |")
PY
