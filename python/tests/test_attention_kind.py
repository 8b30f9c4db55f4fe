"""An attention kind written in Python: registered by name, it trains inside the library's GPT and ViT trainers,
checkpoints, samples and feeds the probes. The layer (examples/python/standard_attention.py) is standard
attention in ellipse ops, built from the same parameters in the same order, so the library's models must train
it exactly as their built-in kind."""
import json
import os
import pathlib
import sys

import numpy as np
import pytest

import ellipse
from ellipse import models, nn, study

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"))
import standard_attention  # noqa: E402 (the example's folder is not a package)
from standard_attention import PythonStandard  # noqa: E402

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
TEXT = "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak.\n" * 40


def register_once(name, factory):
    if name not in nn.attention_kinds():
        nn.register_attention(name, factory)


@pytest.fixture(scope="module")
def kind():
    return standard_attention.register()


def train_gpt(folder, attention):
    losses = []
    last = models.train_gpt(str(folder / "text.txt"), str(folder / attention), config="gpt-tiny", attention=attention,
                            steps=6, warmup=2, lr=3e-3, seed=3, eval_every=3,
                            on_step=lambda step, loss, lr: losses.append(loss))
    return losses, last


def test_a_python_kind_trains_in_the_gpt_exactly_as_the_built_in_kind(tmp_path, kind):
    (tmp_path / "text.txt").write_text(TEXT)
    python_losses, python_last = train_gpt(tmp_path, kind)
    standard_losses, standard_last = train_gpt(tmp_path, "standard")
    assert python_losses == standard_losses  # bit for bit, through the library's trainer
    assert python_last["val_loss"] == standard_last["val_loss"]

    model, tokenizer = models.load_gpt(str(tmp_path / kind))  # the checkpoint names the kind
    built_in, _ = models.load_gpt(str(tmp_path / "standard"))
    assert model.config.attention == kind and isinstance(model.block(1).attention, PythonStandard)
    assert list(model.named_parameters()) == list(built_in.named_parameters())
    for name, tensor in model.named_parameters().items():
        np.testing.assert_array_equal(tensor.numpy(), built_in.parameter(name).numpy(), err_msg=name)

    # Sampling recomputes the window for each token (a Python layer takes no KV cache), past the context too.
    assert not model.block(0).attention.decodes_incrementally and built_in.block(0).attention.decodes_incrementally
    text = models.sample_gpt(model, tokenizer, "First", tokens=80, temperature=0)
    assert len(text) == 80 and text == models.sample_gpt(model, tokenizer, "First", tokens=80, temperature=0)
    with ellipse.no_grad():
        logits = model(ellipse.tensor([tokenizer.encode("First")]))
    assert text[0] == tokenizer.vocab[int(np.argmax(logits.numpy()[0, -1]))]


def test_a_python_kind_feeds_the_probes_and_the_hooks(kind):
    config = models.gpt_preset("gpt-tiny", 12)
    config.attention = kind
    model = models.GPT(config, 1)
    layer = model.block(1).attention
    ids = ellipse.tensor([[1, 2, 3, 4, 5, 6]])
    seen = []
    hook = layer.add_forward_hook(lambda module, out: seen.append(out.shape))
    layer.keep_attention()
    with ellipse.no_grad():
        model(ids)
    attention = layer.last_attention.numpy()
    assert attention.shape == (1, config.n_head, 6, 6) and abs(attention.sum(-1) - 1).max() < 1e-5
    assert seen == [(1, 6, config.d_model)]
    layer.remove_forward_hook(hook)
    layer.keep_attention(False)
    assert layer.last_attention is None
    with ellipse.no_grad():
        model(ids)
    assert layer.last_attention is None  # record_attention keeps nothing while keeping is off
    layer.record_metric(ellipse.ones([1, config.n_head, 1, config.d_model // config.n_head]))
    assert layer.last_metric.shape == (1, config.n_head, 1, config.d_model // config.n_head)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="Fashion-MNIST is not installed")
def test_a_python_kind_trains_in_the_vit_exactly_as_the_built_in_kind(tmp_path, kind):
    def train(attention):
        losses = []
        last = models.train_vit(str(tmp_path / attention), config="vit-xs", attention=attention, epochs=1, batch=32,
                                limit_train=96, limit_test=64, on_step=lambda step, loss, lr: losses.append(loss))
        return losses, last

    python_losses, python_last = train(kind)
    standard_losses, standard_last = train("standard")
    assert len(python_losses) == 3 and python_losses == standard_losses
    assert python_last["test_loss"] == standard_last["test_loss"]
    assert models.load_vit(str(tmp_path / kind)).config.attention == kind


class Broken(nn.AttentionLayer):
    def __init__(self, slot, result):
        super().__init__()
        self.result = result

    def forward(self, x, causal, v_prev):
        return self.result(x)


def test_errors_name_the_layer_and_what_was_expected():
    x = ellipse.zeros([1, 3, 8])
    with pytest.raises(ellipse.Error, match="NoForward: a subclass of ellipse.nn.AttentionLayer defines forward"):
        type("NoForward", (nn.AttentionLayer,), {})()(x)
    with pytest.raises(ellipse.Error, match=r"Broken.forward: expected out of the input's shape \[1, 3, 8\], got \[3"):
        Broken(None, lambda x: ellipse.zeros([3]))(x)
    with pytest.raises(ellipse.Error, match="Broken.forward: expected a Tensor out or a tuple .out, v., got str"):
        Broken(None, lambda x: "out")(x)
    with pytest.raises(ellipse.Error, match="Broken.forward: expected v to be a Tensor or None, got int"):
        Broken(None, lambda x: (x, 3))(x)
    with pytest.raises(ZeroDivisionError):  # the layer's own exception, through the library's forward
        Broken(None, lambda x: 1 / 0)(x)
    with pytest.raises(ellipse.Error, match="only a Python subclass of ellipse.nn.AttentionLayer"):
        nn.Attention(8, 2).record_attention(x)

    register_once("py-not-a-layer", lambda slot: nn.Linear(slot.dim, slot.dim))
    config = models.gpt_preset("gpt-tiny", 12)
    config.attention = "py-not-a-layer"
    with pytest.raises(ellipse.Error, match="of .py-not-a-layer. returned Linear, not an ellipse.nn.AttentionLayer"):
        models.GPT(config, 0)
    register_once("py-raises", lambda slot: Broken(slot, lambda x: 1 / 0))
    config.attention = "py-raises"
    with pytest.raises(ZeroDivisionError):
        models.GPT(config, 0)(ellipse.tensor([[1, 2]]))
    with pytest.raises(ellipse.Error, match="'standard' is already an attention kind"):
        nn.register_attention("standard", PythonStandard)
    with pytest.raises(ellipse.Error, match="not a usable kind name"):
        nn.register_attention("two words", PythonStandard)


def test_the_study_compares_a_python_kind_with_the_baseline(tmp_path, kind):
    (tmp_path / "text.txt").write_text(TEXT)
    result = study.study_gpt(str(tmp_path / "text.txt"), str(tmp_path / "study"), preset="smoke",
                             attention=["standard", kind])
    comparisons = json.loads(open(result["summary_path"]).read())["comparisons"][kind]
    assert comparisons and all(line["differences"] == [0.0] for line in comparisons.values())  # the same model


def test_blocks_of_a_python_kind_in_a_model_of_ones_own(kind):
    x = ellipse.randn([2, 7, 16], gen=ellipse.Generator(4))

    def blocks(attention):
        gen = ellipse.Generator(11)
        return [nn.Block(16, 2, attention=attention, layer=layer, gen=gen) for layer in range(2)]

    def run(stack):
        v = None
        out = x
        for block in stack:
            out, v = block.forward(out, causal=True, v_prev=v)
        return out

    mine, built_in = blocks(kind), blocks("standard")
    assert isinstance(mine[1].attention, PythonStandard)
    assert list(mine[0].named_parameters()) == list(built_in[0].named_parameters())
    np.testing.assert_array_equal(run(mine).numpy(), run(built_in).numpy())
    with pytest.raises(ellipse.Error, match="'nope' is not an attention kind"):
        nn.Block(16, 2, attention="nope")
