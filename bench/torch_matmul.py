"""The PyTorch side of `bench_matmul --shapes CONFIG`: reads its JSON lines (stdin, or the file given) and
times torch.mm / torch.bmm on each product's shape and operand layouts ("col": a transposed view of a
contiguous tensor, as the library's ops read it), then prints the same lines with impl "pytorch" and its own
step total.

    build/bench_matmul --shapes gpt-s | .torch-venv/bin/python bench/torch_matmul.py
"""
import json
import os
import statistics
import sys
import time

import torch

# As bench/matmul.cpp times a product: warm-up, then repeats until the samples add up to a stable median.
WARMUP, MIN_REPEATS, MAX_REPEATS, MIN_TOTAL_S = 2, 10, 1000, 0.1


def operand(batch, rows, cols, layout):
    transposed = layout == "col"
    shape = (cols, rows) if transposed else (rows, cols)
    t = torch.randn((batch, *shape) if batch > 1 else shape)
    return t.transpose(-1, -2) if transposed else t


def median_ms(product):
    for _ in range(WARMUP):
        product()
    times = []
    while len(times) < MIN_REPEATS or (sum(times) < MIN_TOTAL_S and len(times) < MAX_REPEATS):
        start = time.perf_counter()
        product()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    torch.set_num_threads(os.cpu_count())
    lines = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    step_ms = step_flops = 0.0
    for text in lines:
        shape = json.loads(text)
        if "step_ms" in shape:  # bench_matmul's total: ours replaces it
            print(json.dumps({"config": shape["config"], "impl": "pytorch", "name": shape["name"],
                              "step_ms": round(step_ms, 3), "step_gflop": round(step_flops / 1e9, 4),
                              "model_gflop": shape["model_gflop"], "gflops": round(step_flops / step_ms / 1e6, 1)}))
            step_ms = step_flops = 0.0
            continue
        batch, m, n, k = shape["batch"], shape["m"], shape["n"], shape["k"]
        a, b = operand(batch, m, k, shape["a_layout"]), operand(batch, k, n, shape["b_layout"])
        product = torch.bmm if batch > 1 else torch.mm
        ms = median_ms(lambda: product(a, b))
        flops = 2.0 * m * n * k * batch
        step_ms += shape["count"] * ms
        step_flops += shape["count"] * flops
        print(json.dumps({**shape, "impl": "pytorch", "ms": round(ms, 4), "gflops": round(flops / ms / 1e6, 1)}),
              flush=True)


if __name__ == "__main__":
    main()
