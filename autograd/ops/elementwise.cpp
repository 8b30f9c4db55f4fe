// Elementwise ops: arithmetic with broadcasting, scalar arithmetic, unary maps, where and masks.
// Each op is its forward kernel call plus its backward rule, written with other ops.
#include <limits>

#include "autograd/ops/common.hpp"

namespace ellipse {

namespace {

// Comparisons take any dtype (i64 ids too); arithmetic takes floating inputs.
bool is_comparison(BinaryOp kind) {
  return kind == BinaryOp::eq || kind == BinaryOp::ne || kind == BinaryOp::gt || kind == BinaryOp::lt ||
         kind == BinaryOp::ge || kind == BinaryOp::le;
}

Tensor binary_kernel(std::string_view op, BinaryOp kind, const Tensor& a, const Tensor& b) {
  Backend& backend = detail::same_device_and_dtype(op, {&a, &b});
  if (!is_comparison(kind)) detail::check_floating(op, a);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  Tensor out = empty(shape, a.dtype(), a.device());
  backend.binary(kind, a.detach().expand(shape), b.detach().expand(shape), out);
  return out;
}

Tensor unary_kernel(std::string_view op, UnaryOp kind, const Tensor& x, double a = 0, double b = 0) {
  detail::check_defined(op, {&x});
  detail::check_floating(op, x);
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  backend_for(x.device()).unary(kind, x, out, a, b);
  return out;
}

// Which one tensor a unary op's derivative reads: the node saves only that one for backward.
enum class Reads { input, output };

// An op y = f(x) whose gradient is g * dy/dx, with dy/dx computed by `derivative(t)` from t = x or t = y.
template <class Derivative>
Tensor unary_op(std::string_view op, UnaryOp kind, const Tensor& x, Reads reads, Derivative derivative,
                double a = 0, double b = 0) {
  Tensor y = unary_kernel(op, kind, x, a, b);
  const Tensor saved = (reads == Reads::input ? x : y).detach();
  return record(op, y, {x}, [saved, derivative](const Tensor& g, const std::vector<bool>&) {
    return std::vector{mul(g, derivative(saved))};
  });
}

// maximum (direction 1) or minimum (direction -1). The gradient goes to the chosen input and splits equally
// where a and b tie, as max's does: a's share is (1 + direction * sign(a - b)) / 2, b's the rest.
Tensor extremum(std::string_view op, BinaryOp kind, double direction, const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(op, kind, a, b);
  return record(op, out, {a, b},
                [op, direction, a = a.detach(), b = b.detach()](const Tensor& g, const std::vector<bool>& needs) {
                  const Tensor sign = unary_kernel(op, UnaryOp::sign, sub(a, b));
                  const Tensor share_a = add(mul(sign, 0.5 * direction), 0.5);
                  return std::vector{needs[0] ? sum_to(mul(g, share_a), a.shape()) : Tensor(),
                                     needs[1] ? sum_to(mul(g, rsub(share_a, 1.0)), b.shape()) : Tensor()};
                });
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel("add", BinaryOp::add, a, b);
  return record("add", out, {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector{needs[0] ? sum_to(g, sa) : Tensor(), needs[1] ? sum_to(g, sb) : Tensor()};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel("sub", BinaryOp::sub, a, b);
  return record("sub", out, {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector{needs[0] ? sum_to(g, sa) : Tensor(), needs[1] ? sum_to(neg(g), sb) : Tensor()};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel("mul", BinaryOp::mul, a, b);
  return record("mul", out, {a, b}, [a = a.detach(), b = b.detach()](const Tensor& g, const std::vector<bool>& needs) {
    return std::vector{needs[0] ? sum_to(mul(g, b), a.shape()) : Tensor(),
                       needs[1] ? sum_to(mul(g, a), b.shape()) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel("div", BinaryOp::div, a, b);
  return record("div", out, {a, b},
                [a = a.detach(), b = b.detach(), out = out.detach()](const Tensor& g, const std::vector<bool>& needs) {
                  const Tensor ga = needs[0] || needs[1] ? div(g, b) : Tensor();
                  return std::vector{needs[0] ? sum_to(ga, a.shape()) : Tensor(),
                                     needs[1] ? sum_to(neg(mul(ga, out)), b.shape()) : Tensor()};  // -g a / b^2
                });
}

Tensor maximum(const Tensor& a, const Tensor& b) { return extremum("maximum", BinaryOp::maximum, 1.0, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return extremum("minimum", BinaryOp::minimum, -1.0, a, b); }

Tensor equal(const Tensor& a, const Tensor& b) { return binary_kernel("equal", BinaryOp::eq, a, b); }
Tensor not_equal(const Tensor& a, const Tensor& b) { return binary_kernel("not_equal", BinaryOp::ne, a, b); }
Tensor greater(const Tensor& a, const Tensor& b) { return binary_kernel("greater", BinaryOp::gt, a, b); }
Tensor less(const Tensor& a, const Tensor& b) { return binary_kernel("less", BinaryOp::lt, a, b); }
Tensor greater_equal(const Tensor& a, const Tensor& b) { return binary_kernel("greater_equal", BinaryOp::ge, a, b); }
Tensor less_equal(const Tensor& a, const Tensor& b) { return binary_kernel("less_equal", BinaryOp::le, a, b); }

Tensor add(const Tensor& x, double s) {
  Tensor y = unary_kernel("add", UnaryOp::add_scalar, x, s);
  return record("add", y, {x}, [](const Tensor& g, const std::vector<bool>&) { return std::vector{g}; });
}
Tensor sub(const Tensor& x, double s) { return add(x, -s); }
Tensor mul(const Tensor& x, double s) {
  Tensor y = unary_kernel("mul", UnaryOp::mul_scalar, x, s);
  return record("mul", y, {x}, [s](const Tensor& g, const std::vector<bool>&) { return std::vector{mul(g, s)}; });
}
Tensor div(const Tensor& x, double s) { return mul(x, 1.0 / s); }
Tensor rsub(const Tensor& x, double s) { return add(neg(x), s); }

Tensor neg(const Tensor& x) {
  Tensor y = unary_kernel("neg", UnaryOp::neg, x);
  return record("neg", y, {x}, [](const Tensor& g, const std::vector<bool>&) { return std::vector{neg(g)}; });
}

Tensor pow(const Tensor& x, double exponent) {
  return unary_op("pow", UnaryOp::pow_scalar, x, Reads::input, [exponent](const Tensor& in) {
    return mul(pow(in, exponent - 1.0), exponent);
  }, exponent);
}

Tensor exp(const Tensor& x) {
  return unary_op("exp", UnaryOp::exp, x, Reads::output, [](const Tensor& y) { return y; });
}

Tensor log(const Tensor& x) {
  return unary_op("log", UnaryOp::log, x, Reads::input, [](const Tensor& in) { return pow(in, -1.0); });
}

Tensor sqrt(const Tensor& x) {
  return unary_op("sqrt", UnaryOp::sqrt, x, Reads::output, [](const Tensor& y) { return div(pow(y, -1.0), 2.0); });
}

Tensor abs(const Tensor& x) {
  return unary_op("abs", UnaryOp::abs, x, Reads::input,
                  [](const Tensor& in) { return unary_kernel("abs", UnaryOp::sign, in); });
}

Tensor sin(const Tensor& x) {
  return unary_op("sin", UnaryOp::sin, x, Reads::input, [](const Tensor& in) { return cos(in); });
}

Tensor cos(const Tensor& x) {
  return unary_op("cos", UnaryOp::cos, x, Reads::input, [](const Tensor& in) { return neg(sin(in)); });
}

Tensor clamp(const Tensor& x, double low, double high) {
  ELLIPSE_CHECK(low <= high, "clamp: low ({}) must not exceed high ({})", low, high);
  return unary_op("clamp", UnaryOp::clamp, x, Reads::input, [low, high](const Tensor& in) {
    return unary_kernel("clamp", UnaryOp::inside, in, low, high);
  }, low, high);
}

Tensor tanh(const Tensor& x) {
  return unary_op("tanh", UnaryOp::tanh, x, Reads::output, [](const Tensor& y) { return rsub(mul(y, y), 1.0); });
}

Tensor sigmoid(const Tensor& x) {
  return unary_op("sigmoid", UnaryOp::sigmoid, x, Reads::output,
                  [](const Tensor& y) { return mul(y, rsub(y, 1.0)); });
}

Tensor relu(const Tensor& x) {
  return unary_op("relu", UnaryOp::relu, x, Reads::input,
                  [](const Tensor& in) { return unary_kernel("relu", UnaryOp::step, in); });
}

Tensor gelu(const Tensor& x) {
  Tensor y = unary_kernel("gelu", UnaryOp::gelu, x);
  // g * gelu'(x) in one kernel: the derivative is never stored.
  return record("gelu", y, {x}, [x = x.detach()](const Tensor& g, const std::vector<bool>&) {
    return std::vector{binary_kernel("gelu", BinaryOp::gelu_backward, g, x)};
  });
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  Backend& backend = detail::same_device_and_dtype("where", {&a, &b});
  detail::check_defined("where", {&cond});
  ELLIPSE_CHECK(cond.device() == a.device(), "where: condition is on {}, values on {}", cond.device().str(),
                a.device().str());
  const Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = empty(shape, a.dtype(), a.device());
  backend.where(cond.detach().expand(shape), a.detach().expand(shape), b.detach().expand(shape), out);
  return record("where", out, {a, b},
                [cond = cond.detach(), sa = a.shape(), sb = b.shape()](const Tensor& g, const std::vector<bool>& needs) {
                  const Tensor zero = zeros({}, g.dtype(), g.device());
                  return std::vector{needs[0] ? sum_to(where(cond, g, zero), sa) : Tensor(),
                                     needs[1] ? sum_to(where(cond, zero, g), sb) : Tensor()};
                });
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  detail::check_defined("masked_fill", {&x, &mask});
  broadcast_shapes(x.shape(), mask.shape(), "masked_fill");  // so that a mismatch names this op, not where
  return where(mask, full({}, value, x.dtype(), x.device()), x);
}

Tensor causal_mask(std::int64_t n, Device device) {
  ELLIPSE_CHECK(n >= 0, "causal_mask: size must be non-negative, got {}", n);
  std::vector<float> values(static_cast<std::size_t>(n * n));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) values[static_cast<std::size_t>(i * n + j)] = j > i ? 1.0f : 0.0f;
  return from_vector(values, {n, n}, device);
}

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, double s) { return add(a, s); }
Tensor operator-(const Tensor& a, double s) { return sub(a, s); }
Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
Tensor operator/(const Tensor& a, double s) { return div(a, s); }
Tensor operator+(double s, const Tensor& a) { return add(a, s); }
Tensor operator-(double s, const Tensor& a) { return rsub(a, s); }
Tensor operator*(double s, const Tensor& a) { return mul(a, s); }
Tensor operator-(const Tensor& a) { return neg(a); }

}  // namespace ellipse
