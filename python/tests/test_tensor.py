"""Tensors from Python: zero-copy exchange with NumPy and DLPack, indexing as views, printing, no_grad."""
import copy
import pathlib
import pickle

import numpy as np
import pytest

import ellipse


def address(array):
    return array.__array_interface__["data"][0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_from_numpy_shares_memory_both_ways(dtype):
    array = np.arange(12, dtype=dtype).reshape(3, 4)
    t = ellipse.from_numpy(array)
    assert t.shape == (3, 4)
    assert t.dtype == {np.float32: ellipse.f32, np.float64: ellipse.f64, np.int64: ellipse.i64}[dtype]
    back = t.numpy()
    assert address(back) == address(array)
    assert np.shares_memory(back, array)
    array[1, 2] = 100  # a write through NumPy is seen by the tensor
    assert t[1, 2].item() == 100
    t.fill_(7)  # and a write through the library by the array
    assert (array == 7).all()


def test_from_numpy_keeps_the_array_alive():
    t = ellipse.from_numpy(np.full((1000,), 3.0, dtype=np.float32))  # the only reference is the tensor's
    assert ellipse.sum(t).item() == 3000


def test_strided_arrays_and_views_stay_zero_copy():
    array = np.arange(24, dtype=np.float32).reshape(4, 6)
    t = ellipse.from_numpy(array[:, 1::2])
    assert t.strides == (6, 2)
    assert address(t.numpy()) == address(array) + 4
    view = ellipse.from_numpy(array)[1:3, ::2]
    assert view.strides == (6, 2)
    assert np.shares_memory(view.numpy(), array)
    np.testing.assert_array_equal(view.numpy(), array[1:3, ::2])


def test_dlpack_round_trip_is_zero_copy():
    array = np.linspace(0, 1, 10, dtype=np.float64)
    t = ellipse.from_dlpack(array)
    assert t.__dlpack_device__() == (1, 0)
    back = np.from_dlpack(t)
    assert address(back) == address(array)
    again = ellipse.from_dlpack(back)
    assert address(again.numpy()) == address(array)


def test_array_protocol():
    t = ellipse.arange(0, 6).reshape([2, 3])
    array = np.asarray(t)
    assert np.shares_memory(array, t.numpy())
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    assert not np.shares_memory(np.array(t, copy=True), array)


def test_tensor_copies():
    array = np.ones((2, 2), dtype=np.float32)
    t = ellipse.tensor(array)
    assert not np.shares_memory(t.numpy(), array)
    assert ellipse.tensor([[1, 2], [3, 4]]).dtype == ellipse.i64
    assert ellipse.tensor([0.5, 1.5]).dtype == ellipse.f32
    assert ellipse.tensor([1, 2], dtype=ellipse.f64).dtype == ellipse.f64
    assert ellipse.tensor(2.5).shape == ()
    assert ellipse.tensor([1.0, 2.0]).tolist() == [1.0, 2.0]


def test_from_numpy_refuses_other_dtypes_and_negative_strides():
    with pytest.raises(ellipse.Error, match="from_dlpack: the array's dtype"):
        ellipse.from_numpy(np.zeros(3, dtype=np.int32))
    with pytest.raises(ellipse.Error, match="negative stride"):
        ellipse.from_numpy(np.arange(4.0)[::-1])
    read_only = np.zeros(3)
    read_only.flags.writeable = False
    with pytest.raises(ellipse.Error, match="from_dlpack: the array is read-only"):
        ellipse.from_numpy(read_only)
    assert ellipse.tensor(read_only).shape == (3,)


def test_indexing_gives_views_like_numpy():
    array = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    t = ellipse.from_numpy(array)
    for key in [1, -1, (1, 2), (slice(None), 1), (slice(1, None), slice(None, None, 2)), (..., 3), (None, 0),
                (0, ..., slice(1, 4)), (slice(None), None, 2), (slice(5, 1),), (slice(-3, -1), -2, ...)]:
        view = t[key]
        np.testing.assert_array_equal(view.numpy(), array[key], err_msg=str(key))
        assert np.shares_memory(view.numpy(), array) or view.numel() == 0
    picked = t[ellipse.tensor([2, 0])]
    np.testing.assert_array_equal(picked.numpy(), array[[2, 0]])


def test_indexing_errors():
    t = ellipse.zeros([2, 3])
    with pytest.raises(ellipse.Error, match="only positive steps"):
        t[::-1]
    with pytest.raises(IndexError, match=r"index 5 at position 0 is out of range for an axis of size 2 \(shape \[2, 3"):
        t[5]
    with pytest.raises(IndexError, match="index -4 at position 1 is out of range for an axis of size 3"):
        t[0, -4]
    with pytest.raises(ellipse.Error, match="3 indices for a tensor of 2 dimensions"):
        t[0, 0, 0]
    with pytest.raises(ellipse.Error, match="2 ellipses"):
        t[..., 0, ...]
    with pytest.raises(TypeError, match="indices are int, slice"):
        t["a"]


def test_metadata_and_printing():
    t = ellipse.zeros([2, 3], dtype=ellipse.f64)
    assert (t.ndim, len(t), t.numel(), t.dtype, str(t.device)) == (2, 2, 6, ellipse.f64, "cpu")
    assert t.device == ellipse.Device("cpu")
    try:
        ellipse.zeros([1], device="cuda")
        usable = True
    except ellipse.Error:
        usable = False
    assert (ellipse.cuda_device_count() > 0) == usable
    assert repr(t).startswith("Tensor(shape=[2, 3], dtype=f64, device=cpu)")
    x = ellipse.ones([2])
    x.requires_grad = True
    assert x.requires_grad and x.is_leaf and x.grad is None
    assert "requires_grad" in repr(x)


def test_backward_fills_grad():
    x = ellipse.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    y = (x * x + 1).sum()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())
    x.zero_grad()
    assert x.grad is None


def test_no_grad():
    x = ellipse.ones([2], dtype=ellipse.f32)
    x.requires_grad = True
    with ellipse.no_grad():
        assert not ellipse.grad_enabled()
        assert not (x * 2).requires_grad
    assert ellipse.grad_enabled() and (x * 2).requires_grad

    @ellipse.no_grad()
    def double(t):
        return t * 2

    assert not double(x).requires_grad


def test_data_ptr_is_the_first_element():
    array = np.arange(10, dtype=np.int64)
    t = ellipse.from_numpy(array)
    assert t.data_ptr() == address(array)
    assert t[3:].data_ptr() == address(array) + 3 * 8


def test_iteration_and_conversions():
    t = ellipse.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert [row.tolist() for row in t] == [[1.0, 2.0], [3.0, 4.0]]
    assert float(t[1, 0]) == 3.0 and int(t[1, 1]) == 4
    assert bool(t[0, 0] > 0.5) and not bool(t[0, 0] > 1.5)
    with pytest.raises(ellipse.Error, match="item"):
        bool(t)


def test_version_is_the_projects():
    cmake = (pathlib.Path(__file__).resolve().parents[2] / "CMakeLists.txt").read_text()
    assert f"project(ellipse VERSION {ellipse.__version__} " in cmake


def test_setitem_writes_through_views_like_numpy():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    expected = array.copy()
    t = ellipse.tensor(array)
    for key, value in [((0, 1), 7.0), ((slice(None), 0, slice(1, 3)), [[-1, -2], [-3, -4]]), ((..., 3), 5),
                       ((1, slice(None, None, 2)), np.full((4,), 9, dtype=np.float64)), (None, 0.5)]:
        t[key] = value
        expected[key] = value
        np.testing.assert_array_equal(t.numpy(), expected, err_msg=str(key))
    t[:, 1] = ellipse.tensor([100.0, 200.0, 300.0, 400.0])  # a Tensor, broadcast over the first axis
    expected[:, 1] = [100, 200, 300, 400]
    np.testing.assert_array_equal(t.numpy(), expected)
    ids = ellipse.tensor([3, 1])
    ids[0] = 2.0  # converted to the tensor's dtype (i64)
    assert ids.numpy().tolist() == [2, 1]

    shared = ellipse.from_numpy(array)  # into a tensor over NumPy's memory: NumPy sees the write
    shared[1, 2, 3] = -8
    assert array[1, 2, 3] == -8

    with pytest.raises(ellipse.Error, match=r"__setitem__: shapes \[4\] and \[3\] do not broadcast"):
        t[0, 0] = [1.0, 2.0, 3.0]
    with pytest.raises(ellipse.Error, match=r"a value of shape \[2, 4\] does not broadcast to the selection's shape"):
        t[0, 0] = np.zeros((2, 4))
    with pytest.raises(ellipse.Error, match="an index tensor selects a copy"):
        t[ellipse.tensor([0])] = 1.0
    weight = ellipse.tensor([0.0, 0.0, 0.0], requires_grad=True)
    with pytest.raises(ellipse.Error, match="takes part in autograd; do it under ellipse.no_grad"):
        weight[0] = 1.0
    with ellipse.no_grad():
        weight[0] = 1.0
    assert weight.numpy().tolist() == [1.0, 0.0, 0.0] and weight.requires_grad


def test_setitem_from_an_overlapping_view_and_without_rounding():
    t = ellipse.tensor([1.0, 2.0, 3.0, 4.0])
    t[1:] = t[:-1]  # reads what it writes: the value is copied out first, as NumPy does
    assert t.numpy().tolist() == [1.0, 1.0, 2.0, 3.0]
    square = ellipse.tensor(np.arange(4.0).reshape(2, 2))
    square[...] = ellipse.transpose(square, 0, 1)
    assert square.numpy().tolist() == [[0.0, 2.0], [1.0, 3.0]]
    wide = ellipse.tensor([0.0, 0.0], dtype=ellipse.f64)
    wide[:1] = [0.1]  # lists take the tensor's dtype: no detour through f32
    wide[1] = 0.1
    assert wide.numpy().tolist() == [0.1, 0.1]
    ids = ellipse.tensor([0, 0])
    ids[0] = 2**60 + 1  # exact in i64, not rounded through a double
    assert int(ids.numpy()[0]) == 2**60 + 1


def test_comparisons_abs_transpose_and_copies():
    t = ellipse.tensor([[1.0, -2.0], [3.0, 4.0]])
    assert (t == t).numpy().tolist() == [[1, 1], [1, 1]]  # elementwise, as NumPy's
    assert (t != 3.0).numpy().tolist() == [[1, 1], [0, 1]]
    assert {t: "key"}[t] == "key"  # still hashed by identity
    assert abs(t).numpy().tolist() == [[1.0, 2.0], [3.0, 4.0]]
    cube = ellipse.randn([2, 3, 4], gen=ellipse.Generator(0))
    assert cube.T.shape == (4, 3, 2) and np.shares_memory(cube.T.numpy(), cube.numpy())
    with pytest.raises(ellipse.Error, match="one element"):
        bool(t == t)  # ambiguous, as NumPy's

    weight = ellipse.tensor([[0.5, 1.5]], dtype=ellipse.f64, requires_grad=True)
    for copied in (pickle.loads(pickle.dumps(weight)), copy.deepcopy(weight)):
        assert copied.dtype == ellipse.f64 and copied.requires_grad and copied.is_leaf
        assert copied.numpy().tolist() == [[0.5, 1.5]] and copied.data_ptr() != weight.data_ptr()
