# %% [markdown]
# # Attention maps and the metric m, from Python
#
# A notebook in plain Python (`# %%` cells, as VS Code, Jupytext and Spyder read them): train a small
# character GPT with elliptical attention, load it, plot what its attention layers do, and train a small
# model written in Python. Run it as a script (`python examples/python/attention_notebook.py [OUT_DIR]`) or
# cell by cell. The figures go to OUT_DIR (default: a temporary folder).

# %%
import os
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")  # files, not windows: runs anywhere, CI included
import matplotlib.pyplot as plt
import numpy as np

import ellipse
from ellipse import models, nn

out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ellipse-notebook-")
os.makedirs(out, exist_ok=True)
shakespeare = "../shared/data/tinyshakespeare.txt"
text_path = os.path.join(out, "text.txt")
with open(text_path, "w") as f:  # the first 20,000 characters of Tiny Shakespeare where it is, else a verse
    if os.path.exists(shakespeare):
        f.write(open(shakespeare).read()[:20000])
    else:
        f.write("Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n" * 200)

# %% [markdown]
# ## Train a small elliptical GPT and load it

# %%
run_dir = os.path.join(out, "gpt-elliptical")
last = models.train_gpt(text_path, run_dir, config="gpt-tiny", attention="elliptical", steps=60, eval_every=30,
                        warmup=10, lr=3e-3, seed=0)
print(f"val loss after 60 steps: {last['val_loss']:.3f}")
model, tokenizer = models.load_gpt(run_dir)

# %% [markdown]
# ## Attention maps of one line: rows are layers, columns heads

# %%
line = "Shall I compare thee to a summer's day?"[: model.config.seq_len]
layers = [model.block(i).attention for i in range(model.config.n_layer)]
for layer in layers:
    layer.keep_attention()
with ellipse.no_grad():
    model(ellipse.tensor([tokenizer.encode(line)]))
maps = [layer.last_attention.numpy()[0] for layer in layers]  # each [heads, queries, keys]
heads = maps[0].shape[0]
figure, axes = plt.subplots(len(maps), heads, figsize=(3 * heads, 3 * len(maps)), squeeze=False)
for l, layer_maps in enumerate(maps):
    for h in range(heads):
        image = axes[l][h].imshow(layer_maps[h], cmap="viridis", vmin=0)
        axes[l][h].set_title(f"layer {l}, head {h}")
        axes[l][h].set_xlabel("key position")
        axes[l][h].set_ylabel("query position")
        figure.colorbar(image, ax=axes[l][h], fraction=0.046)
figure.suptitle(f"Attention weights on {line!r}")
figure.tight_layout()
figure.savefig(os.path.join(out, "attention.png"))
for layer_maps in maps:  # each query's weights over the keys sum to 1, and none reaches the future
    assert np.allclose(layer_maps.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(layer_maps, k=1) == 0)

# %% [markdown]
# ## The metric m of the elliptical layers (layer 0 is standard attention: it has none)
#
# The causal estimator gives one m per query position; the plot averages them over the line.

# %%
metrics = [(l, layer.last_metric.numpy()) for l, layer in enumerate(layers) if layer.last_metric is not None]
assert [l for l, _ in metrics] == list(range(1, model.config.n_layer))
rows = np.concatenate([m[0].mean(axis=1) for _, m in metrics])  # [layers x heads, head dim]
figure, axis = plt.subplots(figsize=(6, 3))
image = axis.imshow(rows, cmap="viridis", vmin=0, vmax=1)
axis.set_yticks(range(rows.shape[0]), [f"L{l} H{h}" for l, m in metrics for h in range(m.shape[1])])
axis.set_xlabel("coordinate of the head")
axis.set_title("m, averaged over query positions")
figure.colorbar(image, ax=axis, label="m")
figure.tight_layout()
figure.savefig(os.path.join(out, "metric.png"))
assert rows.min() >= 0 and rows.max() <= 1 + 1e-6

# %% [markdown]
# ## A model written in Python, trained with the library's optimizer

# %%
class TwoLayer(nn.Module):
    def __init__(self, inputs, hidden, outputs):
        super().__init__()
        self.hidden = self.register_module("hidden", nn.Linear(inputs, hidden))
        self.out = self.register_module("out", nn.Linear(hidden, outputs))

    def forward(self, x):
        return self.out(ellipse.relu(self.hidden(x)))


ellipse.manual_seed(0)
classifier = TwoLayer(2, 32, 2)
points = ellipse.randn([256, 2])
labels = ellipse.tensor((points.numpy()[:, 0] * points.numpy()[:, 1] > 0).astype(np.int64))  # quadrants, XOR-like
optimizer = nn.AdamW(classifier.parameters(), lr=3e-2)
losses = []
for step in range(150):
    optimizer.zero_grad()
    loss = ellipse.cross_entropy(classifier(points), labels)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
figure, axis = plt.subplots(figsize=(5, 3))
axis.plot(losses)
axis.set_xlabel("step")
axis.set_ylabel("cross-entropy")
axis.set_title("A two-layer network on the quadrant task")
figure.tight_layout()
figure.savefig(os.path.join(out, "loss.png"))
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; figures in {out}")
assert losses[-1] < 0.3 * losses[0]
