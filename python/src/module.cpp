// NB_MODULE: the library's errors as ellipse.Error, then each area's bindings.
#include "bindings.hpp"
#include "core/error.hpp"

NB_MODULE(_ellipse, m) {
  namespace nb = nanobind;
  m.doc() = "ellipse: a deep learning library written from scratch in C++20 (the compiled part of the package)";
  m.attr("__version__") = ELLIPSE_VERSION;
  // Every ellipse::Error surfaces as ellipse.Error, a RuntimeError carrying the library's message.
  nb::exception<ellipse::Error>(m, "Error", PyExc_RuntimeError);
  ellipse::python::bind_tensor(m);
  ellipse::python::bind_ops(m);
  nb::module_ nn = m.def_submodule("nn", "Modules, layers, optimizers and the learning-rate schedule");
  ellipse::python::bind_nn(nn);
  nb::module_ models = m.def_submodule("models", "The GPT and the ViT: configs, checkpoints, training, sampling");
  ellipse::python::bind_models(models);
  nb::module_ study = m.def_submodule("study", "The studies and the probe of one trained model");
  ellipse::python::bind_study(study);
}
