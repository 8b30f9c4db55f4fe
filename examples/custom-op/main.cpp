// A differentiable op written outside the library: softplus(x) = log(1 + exp(x)) with a forward loop of
// its own and a backward rule registered through ellipse::record, checked by finite differences
// (ellipse::gradcheck) and against the same function composed of library ops. Exit status 0 when both
// checks pass, 1 otherwise.
#include <ellipse/ellipse.hpp>

#include <cmath>
#include <cstdio>

using ellipse::Tensor;

namespace {

template <class T>
void softplus_kernel(const Tensor& x, const Tensor& out) {
  const T* in = x.data<T>();
  T* y = out.data<T>();
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    // log1p(exp(v)) overflows for large v, where softplus(v) = v + log1p(exp(-v)).
    const T v = in[i];
    y[i] = v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v));
  }
}

Tensor softplus(const Tensor& x) {
  // Validate like the library's own ops: name the op, the offending value and what was expected.
  ELLIPSE_CHECK(x.defined(), "softplus: the input is undefined");
  ELLIPSE_CHECK(ellipse::is_floating(x.dtype()), "softplus: expected a floating tensor, got {}",
                ellipse::dtype_name(x.dtype()));
  ELLIPSE_CHECK(x.device().is_cpu(), "softplus: only CPU tensors are supported, got {}", x.device().str());

  // The kernel reads plain memory, so give it a contiguous input; detach so that the forward computation
  // itself records no graph.
  const Tensor input = x.detach().contiguous();
  Tensor out = ellipse::empty(x.shape(), x.dtype(), x.device());
  if (x.dtype() == ellipse::DType::f32) {
    softplus_kernel<float>(input, out);
  } else {
    softplus_kernel<double>(input, out);
  }

  // d softplus / dx = sigmoid(x). The rule captures only a detached tensor (never `out`, which owns the
  // node) and is written with library ops, so it is differentiable and runs wherever x lives.
  const Tensor saved = x.detach();
  return ellipse::record("softplus", out, {x},
                         [saved](const Tensor& grad, const std::vector<bool>& needs_grad) -> std::vector<Tensor> {
                           if (!needs_grad[0]) return {Tensor()};
                           return {grad * ellipse::sigmoid(saved)};
                         });
}

}  // namespace

int main() {
  try {
    ellipse::Generator gen(0);
    // f64 inputs for the finite-difference check; a transposed view exercises the contiguous() path.
    Tensor x = (ellipse::randn({4, 5}, gen, ellipse::DType::f64) * 4.0).transpose(0, 1).requires_grad_();
    const ellipse::GradcheckResult check =
        ellipse::gradcheck([](const std::vector<Tensor>& in) { return softplus(in[0]) * in[0]; }, {x});
    std::printf("custom-op: gradcheck max error %.3g (%s)\n", check.max_error, check.worst.c_str());

    // The same function from library ops: values and gradients must agree.
    x.zero_grad();  // gradcheck's own backward calls left a gradient behind
    const Tensor ours = softplus(x);
    const Tensor composed = ellipse::log(1.0 + ellipse::exp(x));
    const double value_diff = ellipse::max(ellipse::abs(ours - composed)).item();
    ellipse::sum(ours).backward();
    const Tensor grad_ours = x.grad().clone();
    x.zero_grad();
    ellipse::sum(composed).backward();
    const double grad_diff = ellipse::max(ellipse::abs(grad_ours - x.grad())).item();
    std::printf("custom-op: vs library ops: values differ by %.3g, gradients by %.3g\n", value_diff, grad_diff);

    // And it refuses what it cannot handle, with the library's error type.
    bool refused = false;
    try {
      softplus(ellipse::arange(0, 3, 1, ellipse::DType::i64));
    } catch (const ellipse::Error& e) {
      std::printf("custom-op: i64 input refused: %s\n", e.what());
      refused = true;
    }

    const bool ok = check.max_error < 1e-6 && value_diff < 1e-12 && grad_diff < 1e-12 && refused;
    if (!ok) std::fprintf(stderr, "custom-op: FAILED\n");
    return ok ? 0 : 1;
  } catch (const ellipse::Error& e) {
    std::fprintf(stderr, "custom-op: error: %s\n", e.what());
    return 1;
  }
}
