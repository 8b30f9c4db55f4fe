#!/usr/bin/env python3
"""GPT checkpoints between ellipse and PyTorch, both ways, compared on logits and loss.

  1. ellipse -> PyTorch: `ellipse train gpt` trains a short run; the PyTorch peer (bench/torch_models.py,
     in float64) loads model.safetensors and computes logits on fixed token ids and the val loss; they are
     compared with what `ellipse eval gpt --ids ... --logits ...` writes and prints.
  2. PyTorch -> ellipse: the peer is initialised and trained a few AdamW steps in float32, written as
     model.safetensors + config.json in ellipse's naming, and `ellipse eval gpt` evaluates it; the same
     comparison against the peer's float64 evaluation of those weights.

Logits are compared as max|ellipse - torch| / max|torch| over the [batch, tokens, vocab] array, losses as
|ellipse - torch| / torch. Prints one JSON line per checkpoint; exit status 0 when every difference is
within --tolerance (default 1e-5), 1 otherwise. Needs Debian's python3-torch and NumPy.

  python3 tools/check_torch_roundtrip.py --ellipse build/ellipse --text FILE [--steps N] [--work DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from torch_models import GPT, GPT_PRESETS, gpt_val_loss, load_gpt_checkpoint, save_gpt_checkpoint  # noqa: E402

ATTENTIONS = [("standard", "causal"), ("elliptical", "causal"), ("elliptical", "sequence")]


def ellipse_eval(binary, model_dir, text, ids_path, logits_path):
    out = subprocess.run([binary, "eval", "gpt", "--model", model_dir, "--text", text, "--ids", ids_path,
                          "--logits", logits_path], check=True, capture_output=True, text=True).stdout
    return json.loads(out), np.load(logits_path)


def compare(name, binary, model_dir, text_path, ids, val, work, tolerance):
    """Evaluates the checkpoint in model_dir with ellipse and with the float64 peer; one JSON line."""
    ids_path = os.path.join(work, "ids.npy")
    np.save(ids_path, ids.numpy())
    logits_path = os.path.join(work, f"{name}-logits.npy")
    result, ellipse_logits = ellipse_eval(binary, model_dir, text_path, ids_path, logits_path)
    model, config = load_gpt_checkpoint(model_dir)
    with torch.no_grad():
        torch_logits = model(ids)
        n = ids.shape[1]
        torch_ids_loss = F.cross_entropy(torch_logits[:, :-1].reshape(-1, torch_logits.shape[-1]),
                                         ids[:, 1:].reshape(-1)).item()
    torch_logits = torch_logits.numpy()
    torch_val_loss = gpt_val_loss(model, val, config["seq_len"])
    logits_rel = float(np.abs(ellipse_logits - torch_logits).max() / np.abs(torch_logits).max())
    val_rel = abs(result["val_loss"] - torch_val_loss) / torch_val_loss
    ids_rel = abs(result["ids_loss"] - torch_ids_loss) / torch_ids_loss
    ok = bool(ellipse_logits.shape == torch_logits.shape and max(logits_rel, val_rel, ids_rel) <= tolerance)
    print(json.dumps({"check": name, "attn": config["attn"], "m_mode": config["m_mode"],
                      "logits_shape": list(torch_logits.shape), "logits_max_relative": logits_rel,
                      "ellipse_val_loss": result["val_loss"], "torch_val_loss": torch_val_loss,
                      "val_loss_relative": val_rel, "ids_loss_relative": ids_rel, "tokens": n,
                      "tolerance": tolerance, "ok": ok}), flush=True)
    return ok


def train_torch_gpt(vocab, attn, m_mode, train, steps, seed):
    """The peer GPT at gpt-s size, trained `steps` AdamW steps in float32 on random windows of `train`."""
    preset = GPT_PRESETS["gpt-s"]
    torch.manual_seed(seed)
    model = GPT(len(vocab), preset["n_layer"], preset["d_model"], preset["n_head"], preset["seq_len"], attn, m_mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    t, batch = preset["seq_len"], 8
    for _ in range(steps):
        starts = torch.randint(0, len(train) - t - 1, (batch,))
        x = torch.stack([train[s:s + t] for s in starts])
        y = torch.stack([train[s + 1:s + t + 1] for s in starts])
        loss = F.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ellipse", default="build/ellipse", help="the ellipse program")
    parser.add_argument("--text", required=True, help="UTF-8 training text (last 10%% is the val split)")
    parser.add_argument("--steps", type=int, default=10, help="training steps on each side")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--work", help="keep checkpoints and logits here (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    vocab = "".join(sorted(set(text)))  # ellipse's CharTokenizer: the sorted unique code points
    index = {c: i for i, c in enumerate(vocab)}
    ids_all = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = len(ids_all) * 9 // 10
    train, val = ids_all[:cut], ids_all[cut:]
    seq_len = GPT_PRESETS["gpt-s"]["seq_len"]
    ids = torch.stack([val[i * seq_len:(i + 1) * seq_len] for i in range(4)])  # 4 windows of the val split

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or scratch
        os.makedirs(work, exist_ok=True)
        ok = True
        for attn, m_mode in ATTENTIONS:
            tag = f"{attn}-{m_mode}"
            # 1. ellipse writes, PyTorch reads.
            run = os.path.join(work, f"ellipse-{tag}")
            flags = ["--attn", attn] + (["--m-mode", m_mode] if attn == "elliptical" else [])
            subprocess.run([args.ellipse, "train", "gpt", "--text", args.text, *flags, "--steps", str(args.steps),
                            "--eval-every", str(args.steps), "--batch", "8", "--out", run], check=True,
                           stdout=subprocess.DEVNULL)
            ok &= compare(f"ellipse->torch {tag}", args.ellipse, run, args.text, ids, val, work, args.tolerance)
            # 2. PyTorch writes, ellipse reads.
            model = train_torch_gpt(vocab, attn, m_mode, train, args.steps, seed=1)
            run = os.path.join(work, f"torch-{tag}")
            save_gpt_checkpoint(run, model, vocab, "gpt-s", attn, m_mode)
            ok &= compare(f"torch->ellipse {tag}", args.ellipse, run, args.text, ids, val, work, args.tolerance)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
