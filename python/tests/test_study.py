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
