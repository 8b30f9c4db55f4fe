"""ellipse: a deep learning library written from scratch in C++20, from Python.

The compiled module ``ellipse._ellipse`` wraps the C++ library; this package re-exports it and adds the few
pieces that are Python idioms: ``tensor`` (a copy of nested lists or arrays), ``from_numpy`` and ``no_grad``.
NumPy is imported by the functions that need it, so that the module itself imports without it (the type stubs
are generated at build time, where NumPy is not installed).
"""

import sys as _sys

from . import _ellipse
from ._ellipse import *  # noqa: F401,F403 (the library's API, names as in C++)
from ._ellipse import __version__, Error, Tensor, f32, f64, from_dlpack, grad_enabled, i64, models, nn, set_grad_enabled, study

# `import ellipse.nn` and `from ellipse.models import GPT` find the compiled submodules.
for _submodule in (nn, models, study):
    _sys.modules[__name__ + "." + _submodule.__name__.rsplit(".", 1)[-1]] = _submodule

__all__ = [name for name in dir(_ellipse) if not name.startswith("_")] + ["tensor", "from_numpy", "no_grad"]


def from_numpy(array) -> Tensor:
    """A tensor over ``array``'s memory (no copy; it keeps the array alive): float32, float64 or int64, any
    non-negative strides. Writes through either are seen by the other."""
    import numpy

    if not isinstance(array, numpy.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    return from_dlpack(array)


def tensor(data, dtype=None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of ``data`` (nested lists, numbers or an array). Floating data becomes f32
    unless ``dtype`` says otherwise, integer data i64."""
    import numpy

    if dtype is None:
        dtype = i64 if numpy.asarray(data).dtype.kind in "iub" else f32
    numpy_dtype = {f32: numpy.float32, f64: numpy.float64, i64: numpy.int64}[dtype]
    result = from_dlpack(numpy.array(data, dtype=numpy_dtype, order="C", copy=True))
    result.requires_grad = requires_grad
    return result


class no_grad:
    """Within ``with ellipse.no_grad():`` ops record no autograd graph (on this thread); also a decorator."""

    def __enter__(self):
        self._previous = grad_enabled()
        set_grad_enabled(False)

    def __exit__(self, *exc_info):
        set_grad_enabled(self._previous)

    def __call__(self, function):
        def wrapper(*args, **kwargs):
            with no_grad():
                return function(*args, **kwargs)

        wrapper.__name__, wrapper.__doc__ = function.__name__, function.__doc__
        return wrapper


def _tensor_from_pickle(array, dtype, device, requires_grad):
    """Rebuilds a tensor that pickle or copy.deepcopy took apart (see Tensor.__reduce__)."""
    result = tensor(array, dtype=dtype).to(device)
    result.requires_grad = requires_grad
    return result


def _tensor_reduce(self):
    # The values as a NumPy copy, with the dtype, device and requires_grad: a leaf like the original, without its
    # gradient and history, as torch.Tensor's deepcopy of a leaf.
    import numpy

    return _tensor_from_pickle, (numpy.array(self.detach().to("cpu").numpy()), self.dtype, str(self.device),
                                 self.requires_grad)


Tensor.__reduce__ = _tensor_reduce
Tensor.__deepcopy__ = lambda self, memo: _tensor_from_pickle(*_tensor_reduce(self)[1])
