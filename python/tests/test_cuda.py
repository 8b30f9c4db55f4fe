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
