#!/usr/bin/env bash
# ellipse vs PyTorch, one training step (zero grads, forward, cross-entropy, backward, AdamW), timed in
# the same run: each round runs every configuration once with ellipse and once with each of PyTorch's two
# attention paths (F.scaled_dot_product_attention and explicit softmax(q k^T) v) under each of libgomp's two
# wait policies (its default, idle workers spinning, and OMP_WAIT_POLICY=passive, which is faster beside other
# work), alternating, so that load from other processes falls on all of them. PyTorch's figure is the
# fastest of those four settings (by median).
#
#   bench/compare_torch.sh [--rounds 5] [--steps 8] [--warmup 2] [--build build] [--configs "gpt-s:standard ..."]
#
# Prints the peer (torch version, BLAS, CPU capability), the best f32 GEMM rate measured on this machine
# (MKL through torch.mm, or ellipse's own GEMM through build/bench_matmul, both 1024^3, timed in every round:
# on a shared machine one reading can catch a slow moment, and the floor is what the hardware can do), then per
# configuration: the medians over the rounds of each side's median step, the median over the rounds of the
# per-round ratio ellipse / PyTorch (below 1: ellipse is faster), peak RSS, and ellipse's distance to the
# step's GEMM floor (its matrix-product FLOPs at that best rate). Then, for each model timed with both
# attention kinds, the ratio elliptical / standard on each side.
#
# Both sides get the same threads (all cores).
# PyTorch is .torch-venv/bin/python, a current PyTorch from PyPI made by tools/torch-venv.sh; PYTHON=...
# picks another (Debian's /usr/bin/python3 has PyTorch 1.13, whose GEMM is far slower on recent cores).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5 steps=8 warmup=2 build=build
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
source bench/torch_peer.sh  # $python
results=$(mktemp)
trap 'rm -f "$results"' EXIT

"$python" - <<'PY'
import platform, torch
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
blas = "MKL" if torch.backends.mkl.is_available() else "not MKL (see torch.__config__.show())"
print(f"peer: torch {torch.__version__}, BLAS {blas}, oneDNN {torch.backends.mkldnn.is_available()}, "
      f"CPU capability {torch.backends.cpu.get_cpu_capability()}; machine: {cpu}, {torch.get_num_threads()} threads")
PY
# The f32 GEMM rate of each side's 1024^3 product, appended to $results as "gemm SIDE GFLOPS".
measure_gemm() {
  "$build"/bench_matmul | python3 -c 'import json, sys; print("gemm ellipse", json.loads(sys.stdin.readline())["ellipse_gflops"])'
  "$python" - <<'PY'
import time, torch
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
for _ in range(3): torch.mm(a, b)
best = min((lambda t: (torch.mm(a, b), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(30))
print("gemm torch.mm", round(2 * 1024**3 / best / 1e9, 1))
PY
}

for ((round = 1; round <= rounds; ++round)); do
  measure_gemm >>"$results"
  for entry in $configs; do
    IFS=: read -r config attn batch <<<"$entry"
    batch_flag=()
    [[ -n "${batch:-}" ]] && batch_flag=(--batch "$batch")
    echo "round $round/$rounds: $config $attn ${batch:+batch $batch}" >&2
    # (assigned first, so that a failing run stops the script)
    line=$("$build"/ellipse bench --config "$config" --attn "$attn" --steps "$steps" --warmup "$warmup" "${batch_flag[@]}")
    echo "ellipse $round $entry $line" >>"$results"
    for impl in sdpa explicit; do
      for policy in spin passive; do
        wait_policy=()
        [[ $policy == passive ]] && wait_policy=(OMP_WAIT_POLICY=passive)
        line=$(env "${wait_policy[@]}" "$python" bench/torch_bench.py --config "$config" --attn "$attn" \
          --steps "$steps" --warmup "$warmup" --attention-impl "$impl" "${batch_flag[@]}")
        echo "pytorch-$impl-$policy $round $entry $line" >>"$results"
      done
    done
  done
done
python3 - "$results" "$rounds" "$steps" <<'PY'
import json, statistics, sys
path, rounds, steps = sys.argv[1], sys.argv[2], sys.argv[3]
runs = {}  # entry -> impl -> round -> result
gemm = {"ellipse": [], "torch.mm": []}  # each round's 1024^3 rate
for line in open(path):
    if line.startswith("gemm "):
        _, side, rate = line.split()
        gemm[side].append(float(rate))
        continue
    impl, rnd, entry, text = line.split(" ", 3)
    runs.setdefault(entry, {}).setdefault(impl, {})[int(rnd)] = json.loads(text)
ours, mkl = max(gemm["ellipse"]), max(gemm["torch.mm"])
peak = max(ours, mkl)
print(f"f32 GEMM 1024^3, best of the rounds (median): ellipse {ours:.0f} ({statistics.median(gemm['ellipse']):.0f}) "
      f"GFLOP/s, torch.mm {mkl:.0f} ({statistics.median(gemm['torch.mm']):.0f}) GFLOP/s")
med = lambda rs, key="step_ms": statistics.median(r[key] for r in rs.values())
print(f"rounds: {rounds}, timed steps per run: {steps}; GEMM floor at {peak:.0f} GFLOP/s "
      f"(the better of ellipse {ours:.0f} and torch.mm {mkl:.0f})")
print("| config | attn | batch | ellipse ms | PyTorch ms (path) | ratio | ellipse / floor | "
      "peak RSS ellipse / PyTorch MiB | RSS ratio |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
best_of = {}
for entry, sides in runs.items():
    impl = min((i for i in sides if i.startswith("pytorch-")), key=lambda i: med(sides[i]))
    best_of[entry] = impl
    ell, peer = sides["ellipse"], sides[impl]
    ratio = statistics.median(ell[r]["step_ms"] / peer[r]["step_ms"] for r in ell if r in peer)
    rss_e, rss_p = max(r["peak_rss_mib"] for r in ell.values()), max(r["peak_rss_mib"] for r in peer.values())
    first = next(iter(ell.values()))
    floor_ms = first["step_gflop"] / peak * 1e3
    print(f"| {first['config']} | {first['attn']} | {next(iter(peer.values()))['batch']} | {med(ell):.1f} | "
          f"{med(peer):.1f} ({impl[8:]}) | {ratio:.3f} | {med(ell) / floor_ms:.2f} ({floor_ms:.1f} ms) | "
          f"{rss_e:.0f} / {rss_p:.0f} | {rss_e / rss_p:.2f} |")

# What elliptical attention costs over standard, per model that ran both, on each side.
by_model = {}
for entry, sides in runs.items():
    config, attn, *batch = entry.split(":")
    by_model.setdefault((config, tuple(batch)), {})[attn] = entry
pairs = {key: kinds for key, kinds in by_model.items() if {"standard", "elliptical"} <= kinds.keys()}
if pairs:
    print()
    print("| config | batch | ellipse elliptical / standard | PyTorch elliptical / standard |")
    print("| --- | ---: | ---: | ---: |")
    for (config, batch), kinds in pairs.items():
        std, ell = runs[kinds["standard"]], runs[kinds["elliptical"]]
        ours_ratio = med(ell["ellipse"]) / med(std["ellipse"])
        peer_ratio = med(ell[best_of[kinds["elliptical"]]]) / med(std[best_of[kinds["standard"]]])
        print(f"| {config} | {batch[0] if batch else 'preset'} | {ours_ratio:.3f} | {peer_ratio:.3f} |")
PY
