#pragma once
// The extension module ellipse._ellipse is bound one area per file: tensor.cpp (Tensor, dtypes, devices,
// NumPy and DLPack exchange, creation), ops.cpp (autograd/ops.hpp as module functions), nn.cpp (ellipse.nn) and
// models.cpp (ellipse.models: the GPT and the ViT, their data, training, evaluation and sampling) and study.cpp
// (ellipse.study: the studies and the probe of one model).
#include <nanobind/nanobind.h>

#include <memory>
#include <utility>

namespace ellipse::python {

namespace nb = nanobind;

// A Python object held by C++ code that may let go of it without the GIL (a tensor's storage over a NumPy
// array, a forward hook): the last owner releases it under the GIL, or leaves it once the interpreter is gone.
template <class T>
std::shared_ptr<T> hold(T object) {
  return std::shared_ptr<T>(new T(std::move(object)), [](T* held) {
    if (!Py_IsInitialized()) return;
    nb::gil_scoped_acquire gil;
    delete held;
  });
}

void bind_tensor(nb::module_& m);
void bind_ops(nb::module_& m);
void bind_nn(nb::module_& m);
void bind_models(nb::module_& m);
void bind_study(nb::module_& m);

}  // namespace ellipse::python
