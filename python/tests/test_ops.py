"""The ops against NumPy (broadcasting included) and their gradients against finite differences."""
import pathlib
import re

import numpy as np
import pytest

import ellipse

rng = np.random.default_rng(0)


def t(array):
    return ellipse.from_numpy(np.ascontiguousarray(array))


UNARY = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs, "sin": np.sin, "cos": np.cos, "tanh": np.tanh,
    "neg": np.negative, "relu": lambda x: np.maximum(x, 0), "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_ops_match_numpy(name):
    x = rng.uniform(0.1, 2.0, (3, 5)).astype(np.float64)
    if name not in ("log", "sqrt"):
        x -= 1.0
    np.testing.assert_allclose(getattr(ellipse, name)(t(x)).numpy(), UNARY[name](x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3))])
def test_binary_ops_broadcast_like_numpy(shapes):
    a = rng.standard_normal(shapes[0]).astype(np.float32)
    b = rng.uniform(0.5, 2.0, shapes[1]).astype(np.float32)
    for op, expected in [(ellipse.add, a + b), (ellipse.sub, a - b), (ellipse.mul, a * b), (ellipse.div, a / b),
                         (ellipse.maximum, np.maximum(a, b)), (ellipse.less, (a < b).astype(np.float32))]:
        np.testing.assert_allclose(op(t(a), t(b)).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose((t(a) + t(b)).numpy(), a + b, rtol=1e-6)
    np.testing.assert_allclose((2 - t(a) / 4).numpy(), 2 - a / 4, rtol=1e-6)
    np.testing.assert_allclose((1 / t(b)).numpy(), 1 / b, rtol=1e-6)
    np.testing.assert_allclose((t(b) ** 2.5).numpy(), b ** 2.5, rtol=1e-5)


def test_matmul_reductions_and_nn_ops_match_numpy():
    a = rng.standard_normal((2, 3, 4))
    b = rng.standard_normal((4, 5))
    np.testing.assert_allclose((t(a) @ t(b)).numpy(), a @ b, rtol=1e-12)
    np.testing.assert_allclose(ellipse.sum(t(a), [0, 2]).numpy(), a.sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(ellipse.mean(t(a), [1], keepdim=True).numpy(), a.mean(axis=1, keepdims=True))
    np.testing.assert_allclose(ellipse.max(t(a), [-1]).numpy(), a.max(axis=-1))
    np.testing.assert_allclose(ellipse.cumsum(t(a), 1).numpy(), np.cumsum(a, axis=1), rtol=1e-12)
    np.testing.assert_array_equal(ellipse.argmax(t(a), 2).numpy(), a.argmax(axis=2))
    softmax = np.exp(a) / np.exp(a).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(ellipse.softmax(t(a), -1).numpy(), softmax, rtol=1e-12)
    np.testing.assert_allclose(ellipse.log_softmax(t(a), -1).numpy(), np.log(softmax), rtol=1e-12)
    values, indices = ellipse.topk(t(a), 2, -1)
    np.testing.assert_array_equal(indices.numpy(), np.argsort(-a, axis=-1)[..., :2])
    np.testing.assert_allclose(values.numpy(), np.take_along_axis(a, indices.numpy(), -1))
    w, bias = rng.standard_normal((5, 4)), rng.standard_normal(5)
    np.testing.assert_allclose(ellipse.linear(t(a), t(w), t(bias)).numpy(), a @ w.T + bias, rtol=1e-12)
    np.testing.assert_allclose(ellipse.linear(t(a), t(w)).numpy(), a @ w.T, rtol=1e-12)
    parts = ellipse.split(t(a), [1, 3], 2)
    np.testing.assert_array_equal(ellipse.concat(parts, 2).numpy(), a)
    np.testing.assert_array_equal(ellipse.stack([t(b), t(b)], 0).numpy(), np.stack([b, b]))
    logits, targets = rng.standard_normal((6, 3)), np.array([0, 2, 1, 1, 0, 2])
    expected = -np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[np.arange(6), targets].mean()
    assert ellipse.cross_entropy(t(logits), t(targets)).item() == pytest.approx(expected, rel=1e-12)


def test_attention_matches_its_definition():
    q, k, v = (rng.standard_normal((1, 2, 5, 4)) for _ in range(3))
    fused = ellipse.scaled_dot_product_attention(t(q), t(k), t(v), scale=0.5, causal=True)
    scores = ellipse.scaled_softmax(t(q) @ ellipse.transpose(t(k), -1, -2), 0.5, True)
    np.testing.assert_allclose(fused.numpy(), (scores @ t(v)).numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, f", [
    ("mul+exp", lambda xs: ellipse.exp(xs[0]) * xs[1]),
    ("matmul", lambda xs: xs[0] @ ellipse.transpose(xs[1], 0, 1)),
    ("softmax", lambda xs: ellipse.softmax(xs[0] * xs[1], -1)),
    ("layer_norm", lambda xs: ellipse.layer_norm(xs[0], xs[1][0], xs[1][1])),
    ("slicing", lambda xs: xs[0][:, 1::2] * xs[1][0, :2]),
])
def test_gradcheck(name, f):
    inputs = [ellipse.randn([3, 4], dtype=ellipse.f64), ellipse.randn([3, 4], dtype=ellipse.f64)]
    for x in inputs:
        x.requires_grad = True
    max_error, worst = ellipse.gradcheck(f, inputs)
    assert max_error < 1e-6, f"{name}: {worst}"


def test_gradient_against_our_own_finite_differences():
    x0 = rng.standard_normal((2, 3))
    f = lambda x: ellipse.sum(ellipse.tanh(x) * ellipse.sigmoid(x) ** 2)  # noqa: E731
    x = t(x0.copy())
    x.requires_grad = True
    f(x).backward()
    numeric = np.zeros_like(x0)
    step = 1e-6
    for i in np.ndindex(x0.shape):
        plus, minus = x0.copy(), x0.copy()
        plus[i] += step
        minus[i] -= step
        numeric[i] = (f(t(plus)).item() - f(t(minus)).item()) / (2 * step)
    np.testing.assert_allclose(x.grad.numpy(), numeric, rtol=1e-6, atol=1e-8)


def test_errors_carry_the_library_messages():
    assert issubclass(ellipse.Error, RuntimeError)
    with pytest.raises(ellipse.Error, match=r"matmul: shapes \[2, 3\] and \[2, 3\] do not chain"):
        ellipse.matmul(ellipse.zeros([2, 3]), ellipse.zeros([2, 3]))
    with pytest.raises(ellipse.Error, match=r"add: .*\[2\].*\[3\]"):
        ellipse.ones([2]) + ellipse.ones([3])
    with pytest.raises(ellipse.Error, match="cuda|CUDA"):
        ellipse.zeros([1], device="cuda:7")
    with pytest.raises(ellipse.Error, match="backward"):
        ellipse.ones([1]).backward()


def test_every_op_of_the_header_is_bound():
    header = (pathlib.Path(__file__).resolve().parents[2] / "autograd" / "ops.hpp").read_text()
    names = set(re.findall(r"^(?:Tensor|std::vector<Tensor>|TopK|EllipticalMetric|bool) (\w+)\(", header, re.MULTILINE))
    assert len(names) > 60
    assert sorted(name for name in names if not hasattr(ellipse, name)) == []
