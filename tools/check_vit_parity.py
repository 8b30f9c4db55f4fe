#!/usr/bin/env python3
"""Loads a ViT checkpoint written by `ellipse train vit` into the PyTorch peer (bench/torch_models.py) with
strict name and shape checks, computes the clean test loss on the first N Fashion-MNIST test images in
float64, and compares it with the loss `ellipse eval vit --limit N` printed.

  python3 tools/check_vit_parity.py --model DIR --ellipse-loss X [--limit 1000] [--data DIR] [--tolerance 1e-5]

Exit status 0 when |torch - ellipse| / ellipse <= tolerance, 1 otherwise. Needs Debian's python3-torch.
"""
import argparse
import gzip
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from torch_models import ViT, load_safetensors  # noqa: E402


def read_idx(path, offset):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read()[offset:], dtype=np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--ellipse-loss", type=float, required=True)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()

    with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    model = ViT(config["n_layer"], config["d_model"], config["n_head"], image=config["image"], patch=config["patch"],
                classes=config["classes"], attn=config["attn"], m_mode=config["m_mode"]).double()
    state = load_safetensors(os.path.join(args.model, "model.safetensors"))
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in state.items()}
    if expected != got:
        print(f"names or shapes differ:\n  expected {expected}\n  got {got}", file=sys.stderr)
        return 1
    model.load_state_dict({k: v.double() for k, v in state.items()}, strict=True)
    model.eval()

    side = config["image"]
    images = read_idx(os.path.join(args.data, "t10k-images-idx3-ubyte.gz"), 16).reshape(-1, side, side)
    labels = read_idx(os.path.join(args.data, "t10k-labels-idx1-ubyte.gz"), 8)
    x = torch.from_numpy(images[:args.limit].astype(np.float64) / 255.0)
    y = torch.from_numpy(labels[:args.limit].astype(np.int64))
    with torch.no_grad():
        logits = model(x)
    torch_loss = F.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(1) == y).double().mean().item()
    relative = abs(torch_loss - args.ellipse_loss) / abs(args.ellipse_loss)
    ok = relative <= args.tolerance
    print(json.dumps({"model": args.model, "attn": config["attn"], "m_mode": config["m_mode"], "images": len(y),
                      "ellipse_loss": args.ellipse_loss, "torch_loss": torch_loss, "torch_accuracy": accuracy,
                      "relative_difference": relative, "tolerance": args.tolerance, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
