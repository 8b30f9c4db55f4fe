"""Times one PyTorch training step of a benchmark model, exactly as `ellipse bench` does for ellipse:
zero grads, forward, cross-entropy, backward, AdamW (lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on
matrices only), on random data, and prints one JSON line in `ellipse bench`'s format.

    .torch-venv/bin/python bench/torch_bench.py --config gpt-s --attn elliptical --steps 10 --warmup 2

(.torch-venv/ is made by tools/torch-venv.sh; Debian's python3-torch 1.13 runs it too, more slowly.)

gpt-* use the causal estimator of the elliptical metric, vit-* the sequence one, as ellipse's models do.
"""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_models as tm  # noqa: E402

VOCAB = 65  # as `ellipse bench`: Tiny Shakespeare's character count


def build(config, attn, batch):
    """The model, its input batch and targets, as `ellipse bench` makes them (random data)."""
    if config in tm.VIT_PRESETS:
        p = dict(tm.VIT_PRESETS[config])
        batch = batch or p["batch"]
        model = tm.ViT(p["n_layer"], p["d_model"], p["n_head"], attn=attn, m_mode="sequence")
        return model, torch.rand(batch, 28, 28), torch.randint(0, 10, (batch,))
    p = dict(tm.GPT_PRESETS[config])
    batch = batch or p["batch"]
    model = tm.GPT(VOCAB, p["n_layer"], p["d_model"], p["n_head"], p["seq_len"], attn=attn, m_mode="causal")
    ids = torch.randint(0, VOCAB, (batch, p["seq_len"]))
    return model, ids, torch.randint(0, VOCAB, (batch, p["seq_len"]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="gpt-s")
    parser.add_argument("--attn", default="standard", choices=["standard", "elliptical"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=0, help="batch size (0: the config's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tf32", action="store_true", help="TF32 tensor-core matrix products (CUDA)")
    parser.add_argument("--attention-impl", default="sdpa", choices=["sdpa", "explicit"],
                        help="F.scaled_dot_product_attention, or softmax(q k^T / sqrt(dh)) v as separate ops")
    args = parser.parse_args()
    tm.Attention.implementation = args.attention_impl
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)  # the same thread count as ellipse's OpenMP pool
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32  # fp32 products stay fp32 unless asked
    model, inputs, targets = build(args.config, args.attn, args.batch)
    model, inputs, targets = model.to(device), inputs.to(device), targets.to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99))
    times = []
    for i in range(args.warmup + args.steps):
        if gpu and i == args.warmup:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        loss_value = loss.item()  # waits for the step's kernels on a GPU
        ms = (time.perf_counter() - start) * 1e3
        if i >= args.warmup:
            times.append(ms)
    times.sort()
    median = times[len(times) // 2]
    params = sum(p.numel() for p in model.parameters())
    result = {"config": args.config, "attn": args.attn, "device": args.device, "impl": "pytorch",
              "torch": torch.__version__, "attention_impl": args.attention_impl, "params": params,
              "batch": inputs.shape[0], "step_ms": round(median, 2), "step_ms_min": round(times[0], 2),
              "loss": round(loss_value, 4),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if gpu:
        result["tf32"] = args.tf32
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
