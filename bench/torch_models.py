"""The PyTorch peer of ellipse's benchmark models: the same architecture, parameter names and shapes,
and the same elliptical attention, so that checkpoints move between the two and timings compare like
with like. PyTorch is never a dependency of the library; this file serves tools/ and bench/ only.
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def normalize_metric(s):
    return s / s.amax(dim=-1, keepdim=True).clamp_min(1e-12)


class Attention(nn.Module):
    """qkv output is [q | k | v], each split into H heads of dh (qkv(x).view(B, N, 3, H, dh))."""

    # "sdpa": F.scaled_dot_product_attention where this PyTorch has it; "explicit": softmax(q k^T / sqrt(dh)) v
    # as three ops. Benchmarks time both: which is faster depends on the shapes and the PyTorch build.
    implementation = "sdpa"

    def __init__(self, dim, heads, elliptical=False, m_mode="causal"):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.elliptical, self.m_mode = elliptical, m_mode

    def metric(self, v, v_prev):
        with torch.no_grad():  # m is a stop-gradient constant
            diff = (v - v_prev).abs()
            if self.m_mode == "sequence":
                return normalize_metric(diff.mean(dim=2, keepdim=True))
            if self.m_mode == "causal":
                counts = torch.arange(1, diff.shape[2] + 1, dtype=diff.dtype, device=diff.device)
                return normalize_metric(diff.cumsum(dim=2) / counts[:, None])
            raise ValueError(f"m_mode {self.m_mode} has no deterministic peer")

    def forward(self, x, causal, v_prev=None):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.elliptical and v_prev is not None:
            q = q * self.metric(v, v_prev)
        fused = self.implementation == "sdpa" and hasattr(F, "scaled_dot_product_attention")
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal) if fused else explicit_attention(q, k, v, causal)
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), v


def explicit_attention(q, k, v, causal):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, dim, heads, layer, attn="standard", m_mode="causal"):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, elliptical=attn == "elliptical" and layer >= 1, m_mode=m_mode)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, x, causal, v_prev=None):
        a, v = self.attn(self.ln1(x), causal, v_prev)
        x = x + a
        return x + self.mlp(self.ln2(x)), v


GPT_PRESETS = {
    "gpt-s": dict(n_layer=4, d_model=128, n_head=4, seq_len=128, batch=16),
    "gpt-m": dict(n_layer=6, d_model=384, n_head=6, seq_len=256, batch=64),
}


class GPT(nn.Module):
    def __init__(self, vocab, n_layer, d_model, n_head, seq_len, attn="standard", m_mode="causal"):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(seq_len, d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_head, i, attn, m_mode) for i in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        for p in self.parameters():  # GPT-2 style, as ellipse's GPT: N(0, 0.02) weights, zero biases
            nn.init.normal_(p, std=0.02) if p.dim() >= 2 else None
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, ids):
        x = self.tok_emb(ids) + self.pos_emb[: ids.shape[1]]
        v = None
        for block in self.blocks:
            x, v = block(x, True, v)
        return self.head(self.ln_f(x))


VIT_PRESETS = {
    "vit-s": dict(n_layer=6, d_model=128, n_head=4, batch=128),
    "vit-xs": dict(n_layer=4, d_model=32, n_head=4, batch=128),
}


class ViT(nn.Module):
    """28x28 images, 4x4 patches in row-major order (pixels row-major inside a patch), class token first,
    no causal mask, the head on the class token after ln_f."""

    def __init__(self, n_layer, d_model, n_head, image=28, patch=4, classes=10, attn="standard", m_mode="sequence"):
        super().__init__()
        self.patch = patch
        tokens = (image // patch) ** 2 + 1
        self.patch_emb = nn.Linear(patch * patch, d_model)
        self.cls_token = nn.Parameter(torch.zeros(d_model))
        self.pos_emb = nn.Parameter(torch.zeros(tokens, d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_head, i, attn, m_mode) for i in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes, bias=False)
        for name, p in self.named_parameters():  # as ellipse's ViT: N(0, 0.02), zero biases, unit LN gains
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2 or name == "cls_token":
                nn.init.normal_(p, std=0.02)

    def forward(self, images):
        b, side, p = images.shape[0], images.shape[1] // self.patch, self.patch
        patches = images.reshape(b, side, p, side, p).permute(0, 1, 3, 2, 4).reshape(b, side * side, p * p)
        x = torch.cat([self.cls_token.expand(b, 1, -1), self.patch_emb(patches)], dim=1) + self.pos_emb
        v = None
        for block in self.blocks:
            x, v = block(x, False, v)
        return self.head(self.ln_f(x[:, 0]))


# ---- safetensors without the safetensors package (PyTorch 1.13 ships none) ----

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    header.pop("__metadata__", None)
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[base + begin:base + end], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(array.copy())
    return out


def save_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        array = t.detach().cpu().contiguous().numpy()
        code = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64"}[array.dtype]
        raw = array.tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


# ---- GPT checkpoints in ellipse's layout: DIR/model.safetensors + DIR/config.json ----

def load_gpt_checkpoint(directory, dtype=torch.float64):
    """The peer GPT with the weights of an ellipse checkpoint (strict names and shapes), in eval mode,
    and its config.json as a dict."""
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    model = GPT(len(config["vocab"]), config["n_layer"], config["d_model"], config["n_head"], config["seq_len"],
                attn=config["attn"], m_mode=config["m_mode"]).to(dtype)
    state = load_safetensors(os.path.join(directory, "model.safetensors"))
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in state.items()}
    if expected != got:
        raise ValueError(f"{directory}: names or shapes differ:\n  expected {expected}\n  got {got}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return model.eval(), config


def save_gpt_checkpoint(directory, model, vocab, config_name, attn, m_mode):
    """Writes what `ellipse eval gpt` and `ellipse sample` read: F32 weights under the shared names and
    config.json with the vocabulary in id order."""
    os.makedirs(directory, exist_ok=True)
    save_safetensors(os.path.join(directory, "model.safetensors"),
                     {name: t.float() for name, t in model.state_dict().items()})
    block = model.blocks[0]
    config = {"model": "gpt", "config": config_name, "n_layer": len(model.blocks),
              "d_model": model.pos_emb.shape[1], "n_head": block.attn.heads, "seq_len": model.pos_emb.shape[0],
              "vocab_size": len(vocab), "vocab": vocab, "attn": attn, "m_mode": m_mode, "dropout": 0.0}
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")


def gpt_val_loss(model, val, seq_len, batch=32):
    """`ellipse eval gpt`'s definition: mean cross-entropy over the non-overlapping windows of seq_len tokens
    of `val` from its start (the last partial window dropped), in batches of `batch` windows."""
    windows = (len(val) - 1) // seq_len
    total = 0.0
    with torch.no_grad():
        for first in range(0, windows, batch):
            count = min(batch, windows - first)
            starts = [(first + w) * seq_len for w in range(count)]
            x = torch.stack([val[s:s + seq_len] for s in starts])
            y = torch.stack([val[s + 1:s + seq_len + 1] for s in starts])
            logits = model(x)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item() * count
    return total / windows
