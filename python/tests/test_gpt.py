"""The GPT from Python: a training loop written in Python reproduces the library's trainer (what `ellipse train
gpt` runs) loss for loss, and its checkpoint loads, evaluates and samples."""
import threading
import time

import numpy as np
import pytest

import ellipse
from ellipse import models, nn

TEXT = "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak.\n" * 40
STEPS, WARMUP, LR, FINAL_LR, WEIGHT_DECAY, CLIP, SEED = 6, 2, 3e-3, 3e-4, 0.1, 1.0, 5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt")
    (folder / "text.txt").write_text(TEXT)
    losses = []
    last = models.train_gpt(str(folder / "text.txt"), str(folder / "run"), config="gpt-tiny", attention="elliptical",
                            steps=STEPS, lr=LR, final_lr=FINAL_LR, warmup=WARMUP, weight_decay=WEIGHT_DECAY,
                            clip=CLIP, seed=SEED, eval_every=STEPS,
                            on_step=lambda step, loss, lr: losses.append(loss))
    return folder, losses, last


def test_python_loop_matches_the_library_trainer_exactly(run):
    _, trainer_losses, last = run
    tokenizer = models.CharTokenizer.from_text(TEXT)
    train, _ = models.split_train_val(tokenizer.encode(TEXT))
    config = models.gpt_preset("gpt-tiny", tokenizer.size)
    config.attention = "elliptical"
    model = models.GPT(config, SEED)
    model.train()
    optimizer = nn.AdamW(model.parameters(), lr=LR, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=WEIGHT_DECAY)
    data = ellipse.Generator(SEED ^ 0x5EEDDA7A)  # the trainer's data generator
    losses = []
    for step in range(STEPS):
        optimizer.lr = nn.warmup_cosine_lr(step, WARMUP, STEPS, LR, FINAL_LR)
        optimizer.zero_grad()
        inputs, targets = models.sample_windows(train, config.batch, config.seq_len, data)
        loss = ellipse.cross_entropy(model(inputs), targets)
        losses.append(loss.item())
        loss.backward()
        nn.clip_grad_norm(model.parameters(), CLIP)
        optimizer.step()
    assert losses == trainer_losses  # bit for bit
    assert last["step"] == STEPS and last["train_loss"] == pytest.approx(sum(losses) / STEPS)

    # The loop's model saved as a checkpoint: the same one the trainer wrote.
    folder = run[0]
    models.save_gpt(str(folder / "python-loop"), model, tokenizer)
    saved, saved_tokenizer = models.load_gpt(str(folder / "python-loop"))
    trained, _ = models.load_gpt(str(folder / "run"))
    assert saved_tokenizer.vocab == tokenizer.vocab and saved.config.attention == "elliptical"
    for name, tensor in trained.named_parameters().items():
        assert np.array_equal(saved.parameter(name).numpy(), tensor.numpy()), name
    with pytest.raises(ellipse.Error, match="holds a training run"):
        models.save_gpt(str(folder / "run"), model, tokenizer)


def test_checkpoint_loads_evaluates_and_samples(run):
    folder, _, last = run
    model, tokenizer = models.load_gpt(str(folder / "run"))
    assert not model.training and model.config.attention == "elliptical"
    _, val = models.split_train_val(tokenizer.encode(TEXT))
    assert models.evaluate_gpt(model, val) == pytest.approx(last["val_loss"], rel=1e-6)
    text = models.sample_gpt(model, tokenizer, "First", tokens=20, temperature=0)
    assert len(text) == 20 and set(text) <= set(tokenizer.vocab)  # the continuation alone
    with pytest.raises(ellipse.Error, match="config.json"):
        models.load_gpt(str(folder / "missing"))


def test_probes_return_arrays(run):
    folder, _, _ = run
    model, tokenizer = models.load_gpt(str(folder / "run"))
    ids = ellipse.tensor([tokenizer.encode("First Citizen: Before we")])
    layer = model.block(1).attention
    assert isinstance(layer, nn.EllipticalAttention) and layer.mode == "causal"
    assert layer.last_attention is None
    layer.keep_attention()
    model.block(1).keep_activations()
    with ellipse.no_grad():
        model(ids)
    attention = layer.last_attention.numpy()
    assert attention.shape == (1, 2, 24, 24)
    assert abs(attention.sum(-1) - 1).max() < 1e-5 and abs(attention[0, 0, 0, 1:]).max() == 0  # causal rows
    assert layer.last_metric.shape == (1, 2, 24, 16) and layer.last_metric.numpy().max() <= 1
    assert 0 <= nn.head_redundancy(layer.last_attention)
    assert -1 <= nn.token_collapse(model.block(1).last_output) <= 1
    with pytest.raises(IndexError):
        model.block(2)


def test_attention_layers_from_python():
    x = ellipse.randn([2, 5, 8], gen=ellipse.Generator(0))
    out, v = nn.Attention(8, 2).forward(x, causal=True)
    assert out.shape == (2, 5, 8) and v.shape == (2, 2, 5, 4)
    elliptical = nn.EllipticalAttention(8, 2, "sequence")
    out, _ = elliptical.forward(x, v_prev=v)
    assert out.shape == (2, 5, 8) and elliptical.last_metric.shape == (2, 2, 1, 4)
    assert "elliptical" in nn.attention_kinds() and "standard" in nn.attention_kinds()


def test_training_releases_the_gil(tmp_path):
    (tmp_path / "text.txt").write_text(TEXT)
    worker = threading.Thread(target=models.train_gpt, args=(str(tmp_path / "text.txt"), str(tmp_path / "run")),
                              kwargs=dict(config="gpt-tiny", steps=30, eval_every=30, warmup=2))
    ticks = 0
    worker.start()
    while worker.is_alive():  # runs only while the trainer, one long call, has released the GIL
        ticks += 1
        time.sleep(0.001)
    worker.join()
    assert ticks > 20
