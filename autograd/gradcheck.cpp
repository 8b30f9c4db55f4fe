#include "autograd/gradcheck.hpp"

#include <cmath>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "core/error.hpp"
#include "core/random.hpp"

namespace ellipse {

namespace {
// Storage offset (in elements) of the i-th element of t in row-major order.
std::int64_t element_offset(const Tensor& t, std::int64_t i) {
  std::int64_t offset = t.offset();
  for (std::int64_t d = t.dim() - 1; d >= 0; --d) {
    offset += (i % t.shape()[d]) * t.strides()[d];
    i /= t.shape()[d];
  }
  return offset;
}
}  // namespace

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& options) {
  for (const auto& x : inputs) {
    ELLIPSE_CHECK(!x.requires_grad() || (x.dtype() == DType::f64 && x.device().is_cpu()),
                  "gradcheck: inputs that require grad must be f64 on the cpu, got {} on {}", dtype_name(x.dtype()),
                  x.device().str());
  }
  Tensor direction;
  auto projected = [&](const std::vector<Tensor>& xs) {
    Tensor y = f(xs);
    if (!direction.defined()) {
      Generator gen(options.seed);
      direction = uniform(y.shape(), 0.5, 1.5, gen, y.dtype());
    }
    return sum(mul(y, direction));
  };

  for (const auto& x : inputs)
    if (x.requires_grad()) x.impl()->grad.reset();
  projected(inputs).backward();

  GradcheckResult result;
  NoGradGuard no_grad;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    if (!x.requires_grad()) continue;
    ELLIPSE_CHECK(x.grad().defined(), "gradcheck: input {} of shape {} received no gradient", k, to_string(x.shape()));
    const auto analytic = x.grad().to_vector<double>();
    double* base = static_cast<double*>(x.storage()->data());
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      double& value = base[element_offset(x, i)];
      const double saved = value;
      value = saved + options.step;
      const double plus = projected(inputs).item();
      value = saved - options.step;
      const double minus = projected(inputs).item();
      value = saved;
      const double numeric = (plus - minus) / (2 * options.step);
      const double a = analytic[static_cast<std::size_t>(i)];
      const double absolute = std::abs(a - numeric), magnitude = std::max(std::abs(a), std::abs(numeric));
      const double error = absolute / std::max(magnitude, options.floor);
      if (!(error <= result.max_error)) {  // also catches NaN
        result.max_error = std::isnan(error) ? INFINITY : error;
        result.worst = fmt::format("input {} element {}: analytic {:.10g}, numeric {:.10g} (absolute error {:.3g}, "
                                   "relative error {:.3g})", k, i, a, numeric, absolute,
                                   magnitude > 0 ? absolute / magnitude : 0.0);
      }
    }
  }
  return result;
}

}  // namespace ellipse
