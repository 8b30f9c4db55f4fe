#pragma once
// Finite-difference gradient checking in f64: compares backward() against central differences.
#include <functional>
#include <string>
#include <vector>

#include "../core/tensor.hpp"

namespace ellipse {

struct GradcheckResult {
  double max_error = 0;   // largest |analytic - numeric| / max(|analytic|, |numeric|, floor) over all entries
  // Where it happened, with both errors there: "input 1 element 7: analytic ..., numeric ... (absolute error
  // ..., relative error ...)" (the relative error divides by max(|analytic|, |numeric|), without the floor).
  std::string worst;
};

struct GradcheckOptions {
  double step = 1e-6;     // central-difference step
  double floor = 1e-3;    // the error is relative above this magnitude, absolute below it
  std::uint64_t seed = 1; // for the random projection of the output
};

// f maps `inputs` to a tensor of any shape; gradients are checked for every f64 input that requires grad.
// The output is projected on a fixed random direction, so every output element contributes. Inputs may
// be non-contiguous or broadcast views: each is perturbed through its own strides.
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& options = {});

}  // namespace ellipse
