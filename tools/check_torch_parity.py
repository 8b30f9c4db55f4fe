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
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from torch_models import GPT, load_safetensors  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--ellipse-val-loss", type=float, required=True)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    vocab = config["vocab"]
    model = GPT(len(vocab), config["n_layer"], config["d_model"], config["n_head"], config["seq_len"],
                attn=config["attn"], m_mode=config["m_mode"]).double()
    state = load_safetensors(os.path.join(args.model, "model.safetensors"))
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in state.items()}
    if expected != got:
        print(f"names or shapes differ:\n  expected {expected}\n  got {got}", file=sys.stderr)
        return 1
    model.load_state_dict({k: v.double() for k, v in state.items()}, strict=True)
    model.eval()

    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    val = ids[len(ids) * 9 // 10:]
    t = config["seq_len"]
    windows = (len(val) - 1) // t
    total = 0.0
    with torch.no_grad():
        for first in range(0, windows, 32):
            count = min(32, windows - first)
            starts = [(first + w) * t for w in range(count)]
            x = torch.stack([val[s:s + t] for s in starts])
            y = torch.stack([val[s + 1:s + t + 1] for s in starts])
            logits = model(x)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item() * count
    torch_loss = total / windows
    relative = abs(torch_loss - args.ellipse_val_loss) / abs(args.ellipse_val_loss)
    ok = relative <= args.tolerance
    print(json.dumps({"model": args.model, "attn": config["attn"], "m_mode": config["m_mode"],
                      "ellipse_val_loss": args.ellipse_val_loss, "torch_val_loss": torch_loss,
                      "relative_difference": relative, "tolerance": args.tolerance, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
