#!/usr/bin/env python3
"""Prints the val-loss curves of several training runs side by side as a Markdown table.

  python3 tools/metrics_table.py NAME=RUN_DIR [NAME=RUN_DIR ...]

Each RUN_DIR holds the metrics.jsonl written by `ellipse train`.
"""
import json
import sys


def main():
    runs = []
    for arg in sys.argv[1:]:
        name, _, path = arg.partition("=")
        with open(f"{path}/metrics.jsonl", encoding="utf-8") as f:
            runs.append((name, {r["step"]: r for r in map(json.loads, f)}))
    if not runs:
        sys.exit(__doc__)
    steps = sorted(set().union(*(r.keys() for _, r in runs)))
    print("| step | " + " | ".join(f"{n} train | {n} val" for n, _ in runs) + " |")
    print("| ---: | " + " | ".join("---: | ---:" for _ in runs) + " |")
    for step in steps:
        cells = []
        for _, records in runs:
            r = records.get(step)
            cells.append(f"{r['train_loss']:.4f} | {r['val_loss']:.4f}" if r else " | ")
        print(f"| {step} | " + " | ".join(cells) + " |")
    for name, records in runs:
        last = records[max(records)]
        print(f"\n{name}: final val_loss {last['val_loss']:.4f} after {last['step']} steps, "
              f"{last['elapsed_s'] / 60:.1f} min, {last['tokens_per_s']:.0f} tokens/s")


if __name__ == "__main__":
    main()
