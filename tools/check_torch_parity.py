#!/usr/bin/env python3
"""Loads a GPT checkpoint written by `ellipse train gpt` into the PyTorch peer model (bench/torch_models.py)
with strict name and shape checks, computes the validation loss exactly as `ellipse eval gpt` defines it,
and compares it with the value ellipse printed.

  python3 tools/check_torch_parity.py --model DIR --text FILE --ellipse-val-loss X [--tolerance 1e-4]

Exit status 0 when |torch - ellipse| / ellipse <= tolerance, 1 otherwise. Needs Debian's python3-torch.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from torch_models import gpt_val_loss, load_gpt_checkpoint  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--ellipse-val-loss", type=float, required=True)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    try:
        model, config = load_gpt_checkpoint(args.model)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    vocab = config["vocab"]
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    torch_loss = gpt_val_loss(model, ids[len(ids) * 9 // 10:], config["seq_len"])
    relative = abs(torch_loss - args.ellipse_val_loss) / abs(args.ellipse_val_loss)
    ok = relative <= args.tolerance
    print(json.dumps({"model": args.model, "attn": config["attn"], "m_mode": config["m_mode"],
                      "ellipse_val_loss": args.ellipse_val_loss, "torch_val_loss": torch_loss,
                      "relative_difference": relative, "tolerance": args.tolerance, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
