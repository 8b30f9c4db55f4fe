"""CUDA tensors from Python: run where the CUDA backend is built and a GPU is present, skipped elsewhere."""
import numpy as np
import pytest

import ellipse


def cuda_available():
    try:
        ellipse.zeros([1], device="cuda")
        return True
    except ellipse.Error:
        return False


pytestmark = pytest.mark.skipif(not cuda_available(), reason="no CUDA device (or no CUDA backend)")


def test_cuda_tensors_and_dlpack():
    x = ellipse.randn([4, 5], gen=ellipse.Generator(0))
    g = x.to("cuda")
    assert str(g.device) == "cuda:0" and g.__dlpack_device__() == (2, 0)
    np.testing.assert_allclose((g @ ellipse.transpose(g, 0, 1)).to("cpu").numpy(), x.numpy() @ x.numpy().T,
                               rtol=1e-5, atol=1e-5)
    view = ellipse.from_dlpack(g)  # through DLPack: the same device memory
    assert view.data_ptr() == g.data_ptr() and str(view.device) == "cuda:0"
    with pytest.raises(ellipse.Error, match="numpy: the tensor is on cuda:0"):
        g.numpy()


def test_python_layer_trains_on_cuda():
    model = ellipse.nn.Sequential([ellipse.nn.Linear(4, 8), ellipse.nn.LayerNorm(8), ellipse.nn.Linear(8, 2)])
    model.to("cuda")
    optimizer = ellipse.nn.AdamW(model.parameters(), lr=1e-2)
    x = ellipse.randn([16, 4], gen=ellipse.Generator(1)).to("cuda")
    targets = ellipse.argmax(x[:, :2], 1)
    first = None
    for _ in range(20):
        optimizer.zero_grad()
        loss = ellipse.cross_entropy(model(x), targets)
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first


def test_dlpack_with_pytorch_on_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    g = ellipse.randn([3, 4], gen=ellipse.Generator(2)).to("cuda")
    theirs = torch.from_dlpack(g)  # ours to theirs: the same device memory
    assert theirs.device.type == "cuda" and theirs.data_ptr() == g.data_ptr()
    back = ellipse.from_dlpack(torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4).t())
    assert str(back.device) == "cuda:0" and back.shape == (4, 3) and back.strides == (1, 4)
    np.testing.assert_array_equal(back.to("cpu").numpy(), np.arange(12, dtype=np.float32).reshape(3, 4).T)


def test_python_attention_kind_trains_on_cuda_as_the_built_in_kind(tmp_path):
    from test_attention_kind import TEXT, standard_attention

    (tmp_path / "text.txt").write_text(TEXT)
    losses = {}
    for kind in (standard_attention.register(), "standard"):
        losses[kind] = []
        ellipse.models.train_gpt(str(tmp_path / "text.txt"), str(tmp_path / kind), config="gpt-tiny", attention=kind,
                                 steps=4, warmup=1, eval_every=4, device="cuda",
                                 on_step=lambda step, loss, lr, kind=kind: losses[kind].append(loss))
    assert len(losses["standard"]) == 4 and losses[standard_attention.KIND] == losses["standard"]
