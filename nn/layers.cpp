#include "nn/layers.hpp"

#include <cmath>

#include "autograd/ops.hpp"
#include "core/error.hpp"

namespace ellipse::nn {

Linear::Linear(std::int64_t in_features, std::int64_t out_features, bool bias, Generator& gen) {
  ELLIPSE_CHECK(in_features > 0 && out_features > 0, "Linear: sizes must be positive, got in={} out={}", in_features,
                out_features);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  weight_ = register_parameter("weight", uniform({out_features, in_features}, -bound, bound, gen));
  if (bias) bias_ = register_parameter("bias", uniform({out_features}, -bound, bound, gen));
}

Tensor Linear::forward(const Tensor& x) const {
  ELLIPSE_CHECK(x.defined() && x.dim() >= 1 && x.shape().back() == in_features(),
                "Linear: expected input [..., {}], got {}", in_features(),
                x.defined() ? to_string(x.shape()) : "undefined");
  const Tensor y = matmul(x, transpose(weight_, 0, 1));
  return bias_.defined() ? add(y, bias_) : y;
}

}  // namespace ellipse::nn
