"""The ViT, the studies and the probe of one model, from Python."""
import json
import os

import numpy as np
import pytest

import ellipse
from ellipse import models, study

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
TEXT = "Now is the winter of our discontent made glorious summer by this sun of York.\n" * 60


def test_study_gpt_smoke_and_inspect(tmp_path):
    (tmp_path / "text.txt").write_text(TEXT)
    lines = []
    result = study.study_gpt(str(tmp_path / "text.txt"), str(tmp_path / "study"), preset="smoke",
                             on_message=lines.append)
    assert result["summarized"] and os.path.exists(result["report_path"])
    summary = json.loads(open(result["summary_path"]).read())
    assert summary and lines
    run = next(p for p in (tmp_path / "study").rglob("model.safetensors") if "elliptical" in str(p)).parent
    measures = study.inspect(str(run), str(tmp_path / "inspect"), text="Now is the winter")
    assert measures["model"] == "gpt" and len(measures["head_redundancy"]) == 2
    assert np.asarray(measures["mean_metric"][1]).shape == (2, 16)  # layer 1 is elliptical: [head][coordinate]
    assert (tmp_path / "inspect" / "attention.npy").exists()


def test_vit_forward_probe_and_checkpoint(tmp_path):
    config = models.vit_preset("vit-xs")
    config.attention = "elliptical"
    model = models.ViT(config, 0)
    images = ellipse.uniform([3, 28, 28], 0.0, 1.0, gen=ellipse.Generator(1))
    model.block(1).attention.keep_attention()
    assert model(images).shape == (3, 10)
    assert model.block(1).attention.last_attention.shape == (3, 4, 50, 50)
    model.eval()
    model.block(1).attention.keep_attention(False)  # the fused path again, as the loaded model takes
    models.save_vit(str(tmp_path / "vit"), model)
    loaded = models.load_vit(str(tmp_path / "vit"))
    assert loaded.config.attention == "elliptical"
    with ellipse.no_grad():
        np.testing.assert_array_equal(loaded(images).numpy(), model(images).numpy())


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="Fashion-MNIST is not installed")
def test_train_vit_a_little(tmp_path):
    steps = []
    last = models.train_vit(str(tmp_path / "vit"), config="vit-xs", epochs=1, batch=32, limit_train=256,
                            limit_test=64, on_step=lambda step, loss, lr: steps.append(loss))
    assert len(steps) == 8 and last["epoch"] == 1 and 0 <= last["test_acc"] <= 1
    model = models.load_vit(str(tmp_path / "vit"))
    assert model.config.name == "vit-xs" and not model.training


def test_vit_batches_perturbations_and_evaluation():
    images = ellipse.uniform([6, 28, 28], 0.0, 1.0, gen=ellipse.Generator(3))
    labels = ellipse.from_numpy(np.arange(6, dtype=np.int64))
    batch, batch_labels = models.image_batch(images, labels, [5, 0, 5])
    np.testing.assert_array_equal(batch.numpy(), images.numpy()[[5, 0, 5]])
    assert batch_labels.numpy().tolist() == [5, 0, 5]
    shifted, _ = models.image_batch(images, labels, [1] * 4, gen=ellipse.Generator(0), max_shift=2)
    assert shifted.shape == (4, 28, 28) and not np.array_equal(shifted.numpy()[0], images.numpy()[1])
    with pytest.raises(ellipse.Error, match="image_batch: index 6 at position 0 is not in"):
        models.image_batch(images, labels, [6])

    model = models.ViT(models.vit_preset("vit-xs"), 0)
    model.eval()
    clean = images.numpy()
    attacked = models.perturb_images(model, images, labels, "pgd:8/255,2", ellipse.Generator(1)).numpy()
    assert 0 < np.abs(attacked - clean).max() <= 8 / 255 + 1e-6 and attacked.min() >= 0 and attacked.max() <= 1
    np.testing.assert_array_equal(models.perturb_images(model, images, labels, "clean", ellipse.Generator(1)).numpy(),
                                  clean)
    with pytest.raises(ellipse.Error, match="perturbation 'blur:1': unknown kind"):
        models.perturb_images(model, images, labels, "blur:1", ellipse.Generator(1))
    plain = models.evaluate_vit(model, images, labels)
    assert plain["count"] == 6 and 0 <= plain["accuracy"] <= 1
    under_attack = models.evaluate_vit(model, images, labels, "fgsm:0.1", limit=4, batch=2)
    assert under_attack["count"] == 4 and under_attack["loss"] > 0


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="Fashion-MNIST is not installed")
def test_load_fashion_mnist():
    images, labels = models.load_fashion_mnist(FASHION_MNIST, "test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert images.dtype == ellipse.f32 and 0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 1
    assert sorted(set(labels.numpy().tolist())) == list(range(10))
