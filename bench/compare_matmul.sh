#!/usr/bin/env bash
# ellipse's matmul vs torch.mm on the exact matrix products of one training step. For each configuration,
# build/bench_matmul --shapes lists every distinct product of the step (shapes and operand layouts as the
# library's ops pass them, derived from the presets) and times it through ellipse's matmul; then
# bench/torch_matmul.py times the same shapes and layouts with torch.mm / torch.bmm. Each round runs every
# configuration once on each side, alternating, so that load from other processes falls on both.
#
#   bench/compare_matmul.sh [--rounds 5] [--build build] [--configs "gpt-s vit-s gpt-m"]
#
# Prints a markdown table per configuration (gpt-m at batch 8): each product's median ms over the rounds on
# each side, the median over the rounds of the per-round ratio ellipse / torch (below 1: ellipse is faster),
# and the GFLOP/s of the medians; then the step's total (the sum over products of count x ms) and its FLOPs
# beside gpt_step_flops / vit_step_flops.
#
# Both sides get all cores; PyTorch keeps libgomp's default wait policy (spinning idle workers).
# PyTorch is .torch-venv/bin/python, made by tools/torch-venv.sh; PYTHON=... picks another.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5 build=build configs="gpt-s vit-s gpt-m"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--build DIR] [--configs \"gpt-s vit-s gpt-m\"]" >&2
       exit 2 ;;
  esac
done
source bench/torch_peer.sh  # $python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -c 'import os, torch; print(f"peer: torch {torch.__version__}, {os.cpu_count()} threads")'
for ((round = 1; round <= rounds; ++round)); do
  for config in $configs; do
    echo "round $round/$rounds: $config" >&2
    "$build"/bench_matmul --shapes "$config" >"$work/ellipse"
    "$python" bench/torch_matmul.py "$work/ellipse" >"$work/pytorch"
    sed "s/^/$round /" "$work/ellipse" "$work/pytorch" >>"$work/results"
  done
done
python3 - "$work/results" "$rounds" <<'PY'
import json, statistics, sys
path, rounds = sys.argv[1], sys.argv[2]
runs = {}  # config -> impl -> round -> name -> line
for line in open(path):
    rnd, text = line.split(" ", 1)
    r = json.loads(text)
    runs.setdefault(r["config"], {}).setdefault(r["impl"], {}).setdefault(int(rnd), {})[r["name"]] = r
med = statistics.median
print(f"rounds: {rounds}; ms: median over the rounds; ratio: median of the per-round ratios ellipse / torch")
for config, sides in runs.items():
    ours, peer = sides["ellipse"], sides["pytorch"]
    both = [r for r in ours if r in peer]
    names = list(ours[both[0]])
    total = names.pop()  # bench_matmul's last line
    print(f"\n### {config}\n")
    print("| product | m | n | k | batch | layouts a, b | count | ellipse ms | torch ms | ratio | ellipse GFLOP/s | "
          "torch GFLOP/s |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")

    def row(name, key, flops):
        e, t = med(ours[r][name][key] for r in both), med(peer[r][name][key] for r in both)
        ratio = med(ours[r][name][key] / peer[r][name][key] for r in both)
        return f"{e:.4g} | {t:.4g} | {ratio:.3f} | {flops / e / 1e6:.1f} | {flops / t / 1e6:.1f} |"

    for name in names:
        p = ours[both[0]][name]
        flops = 2.0 * p["m"] * p["n"] * p["k"] * p["batch"]
        print(f"| {name} | {p['m']} | {p['n']} | {p['k']} | {p['batch']} | {p['a_layout']}, {p['b_layout']} | "
              f"{p['count']} | {row(name, 'ms', flops)}")
    step = ours[both[0]][total]
    count = sum(ours[both[0]][name]["count"] for name in names)
    print(f"| **{total}** (sum of count x ms) | | | | | | {count} | {row(total, 'step_ms', step['step_gflop'] * 1e9)}")
    model = "gpt_step_flops" if config.startswith("gpt") else "vit_step_flops"
    print(f"\n{config}: {step['step_gflop']:.3f} GFLOP of products per step; {model}: {step['model_gflop']:.3f} GFLOP "
          f"(ratio {step['step_gflop'] / step['model_gflop']:.4f})")
PY
