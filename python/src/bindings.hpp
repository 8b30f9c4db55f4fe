#pragma once
// The extension module ellipse._ellipse is bound one area per file: tensor.cpp (Tensor, dtypes, devices,
// NumPy and DLPack exchange, creation), ops.cpp (autograd/ops.hpp as module functions), nn.cpp (ellipse.nn) and
// models.cpp (ellipse.models: the GPT and the ViT, their data, training, evaluation and sampling) and study.cpp
// (ellipse.study: the studies and the probe of one model).
#include <nanobind/nanobind.h>

namespace ellipse::python {

namespace nb = nanobind;

void bind_tensor(nb::module_& m);
void bind_ops(nb::module_& m);
void bind_nn(nb::module_& m);
void bind_models(nb::module_& m);
void bind_study(nb::module_& m);

}  // namespace ellipse::python
