// The optimizer rules against hand-computed updates: AdamW over several steps (bias correction, which
// parameters decay, skipped parameters), global-norm clipping, and the first and last steps of the warm-up +
// cosine schedule. Every device runs them; the CPU in f64 as well.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <numbers>
#include <vector>

#include "helpers.hpp"
#include "nn/optim.hpp"

using namespace ellipse;

namespace {

// Gives p the gradient g (a fresh one: p's old gradient is dropped first).
void set_gradient(Tensor& p, const std::vector<double>& g) {
  p.zero_grad();
  const Tensor direction = from_vector(g, p.shape()).to(p.dtype()).to(p.device());
  sum(mul(p, direction)).backward();
}

std::vector<double> values(const Tensor& t) { return t.to(DType::f64).to(Device::cpu()).to_vector<double>(); }

// Runs body on every available device in f32, and in f64 where the device has it.
void for_each_device_and_dtype(const std::function<void(Device, DType)>& body) {
  for (const auto& d : testing::available_devices()) {
    for (DType dtype : {DType::f32, DType::f64}) {
      if (dtype == DType::f64 && !d.has_f64) continue;
      CAPTURE(d.device.str());
      CAPTURE(dtype_name(dtype));
      body(d.device, dtype);
    }
  }
}

// PyTorch's AdamW, written out: decoupled decay, then the bias-corrected moments' step.
struct ReferenceAdamW {
  double lr, beta1, beta2, eps, weight_decay;
  std::vector<double> m, v;
  int t = 0;

  void step(std::vector<double>& p, const std::vector<double>& g, bool decays) {
    if (m.empty()) m.assign(p.size(), 0.0), v.assign(p.size(), 0.0);
    ++t;
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (decays) p[i] -= lr * weight_decay * p[i];
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
      const double m_hat = m[i] / (1 - std::pow(beta1, t)), v_hat = v[i] / (1 - std::pow(beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
};

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tolerance) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    CAPTURE(i);
    CHECK(std::abs(got[i] - want[i]) <= tolerance * (1.0 + std::abs(want[i])));
  }
}

}  // namespace

TEST_CASE("AdamW: the first step moves each weight by lr against its gradient's sign, then follows the formula") {
  for_each_device_and_dtype([](Device device, DType dtype) {
  const double tolerance = dtype == DType::f64 ? 1e-13 : 2e-6;
  const nn::AdamWOptions options{.lr = 0.1, .beta1 = 0.8, .beta2 = 0.9, .eps = 1e-8, .weight_decay = 0.5};
  // A matrix (decayed), a vector (not decayed: biases and norms) and a matrix that gets no gradient.
  std::vector<double> matrix = {1.0, -2.0, 0.5, 3.0}, vector = {0.25, -0.75};
  const std::vector<double> frozen_values = {7.0, 8.0};
  Tensor w = from_vector(matrix, {2, 2}).to(dtype).to(device).requires_grad_();
  Tensor b = from_vector(vector, {2}).to(dtype).to(device).requires_grad_();
  Tensor frozen = from_vector(frozen_values, {1, 2}).to(dtype).to(device).requires_grad_();
  nn::AdamW optimizer({w, b, frozen}, options);

  // Step 1 by hand: m_hat = g and v_hat = g^2, so each weight moves by lr * g / (|g| + eps) after the decay.
  const std::vector<double> g1w = {0.5, -4.0, 1e-3, 2.0}, g1b = {-3.0, 0.125};
  set_gradient(w, g1w);
  set_gradient(b, g1b);
  optimizer.step();
  CHECK(optimizer.steps() == 1);
  std::vector<double> want_w(4), want_b(2);
  for (int i = 0; i < 4; ++i)
    want_w[i] = matrix[i] * (1 - 0.1 * 0.5) - 0.1 * g1w[i] / (std::abs(g1w[i]) + 1e-8);
  for (int i = 0; i < 2; ++i) want_b[i] = vector[i] - 0.1 * g1b[i] / (std::abs(g1b[i]) + 1e-8);
  check_close(values(w), want_w, tolerance);
  check_close(values(b), want_b, tolerance);
  check_close(values(frozen), frozen_values, 0.0);  // no gradient: untouched

  // Steps 2 and 3 against the textbook formula, with a changed learning rate on step 3.
  ReferenceAdamW ref_w{0.1, 0.8, 0.9, 1e-8, 0.5, {}, {}, 0}, ref_b = ref_w;
  ref_w.step(matrix, g1w, true);
  ref_b.step(vector, g1b, false);
  const std::vector<std::vector<double>> gw = {{-1.0, 2.0, 0.0, 0.5}, {0.25, 0.25, -8.0, 1.0}};
  const std::vector<std::vector<double>> gb = {{1.0, -1.0}, {0.0, 2.0}};
  for (int s = 0; s < 2; ++s) {
    if (s == 1) {
      optimizer.set_lr(0.05);
      ref_w.lr = ref_b.lr = 0.05;
    }
    set_gradient(w, gw[s]);
    set_gradient(b, gb[s]);
    optimizer.step();
    ref_w.step(matrix, gw[s], true);
    ref_b.step(vector, gb[s], false);
    CAPTURE(s + 2);
    check_close(values(w), matrix, tolerance);
    check_close(values(b), vector, tolerance);
  }
  CHECK(optimizer.steps() == 3);
  check_close(values(frozen), frozen_values, 0.0);
  });
}

TEST_CASE("clip_grad_norm: scales every gradient by max_norm / norm when the joint norm is larger, else none") {
  for (const auto& d : testing::available_devices()) {
    CAPTURE(d.device.str());
    Tensor a = zeros({2}).to(d.device).requires_grad_(), c = zeros({1, 1}).to(d.device).requires_grad_();
    Tensor no_grad = zeros({3}).to(d.device).requires_grad_();
    set_gradient(a, {3.0, 4.0});
    set_gradient(c, {12.0});  // joint norm sqrt(9 + 16 + 144) = 13
    CHECK(nn::clip_grad_norm({a, c, no_grad}, 26.0) == doctest::Approx(13.0));
    check_close(values(a.grad()), {3.0, 4.0}, 0.0);  // below the limit: unchanged
    CHECK(nn::clip_grad_norm({a, c, no_grad}, 6.5) == doctest::Approx(13.0));
    const double coefficient = 6.5 / (13.0 + 1e-6);
    check_close(values(a.grad()), {3.0 * coefficient, 4.0 * coefficient}, 1e-6);
    check_close(values(c.grad()), {12.0 * coefficient}, 1e-6);
    CHECK_FALSE(no_grad.grad().defined());
    CHECK(nn::clip_grad_norm({a, c}, 100.0) == doctest::Approx(6.5).epsilon(1e-6));  // the clipped norm
  }
  Tensor p = zeros({1}).requires_grad_();
  CHECK_ERROR(nn::clip_grad_norm({p}, 0.0), "clip_grad_norm", "max_norm", "positive", "got 0");
  CHECK_ERROR(nn::clip_grad_norm({p}, -1.0), "clip_grad_norm", "max_norm", "got -1");
}

TEST_CASE("warmup_cosine_lr: linear warm-up to the peak, cosine decay to the final rate, then flat") {
  const double peak = 1.0, final_lr = 0.1;
  auto lr = [&](std::int64_t step) { return nn::warmup_cosine_lr(step, 4, 10, peak, final_lr); };
  CHECK(lr(0) == doctest::Approx(0.25));  // the first step already trains: (step + 1) / warmup of the peak
  CHECK(lr(1) == doctest::Approx(0.5));
  CHECK(lr(3) == doctest::Approx(1.0));  // the last warm-up step reaches the peak
  CHECK(lr(4) == doctest::Approx(1.0));  // decay starts from the peak
  CHECK(lr(7) == doctest::Approx(0.1 + 0.45 * (1 + std::cos(std::numbers::pi * 0.5))));
  CHECK(lr(9) == doctest::Approx(0.1 + 0.45 * (1 + std::cos(std::numbers::pi * 5.0 / 6.0))));
  CHECK(lr(10) == doctest::Approx(final_lr));
  CHECK(lr(1000) == doctest::Approx(final_lr));
  // Without warm-up the schedule starts at the peak.
  CHECK(nn::warmup_cosine_lr(0, 0, 10, peak, final_lr) == doctest::Approx(peak));
}

TEST_CASE("AdamW parameter groups: each group's rate is lr() * lr_scale and its weight decay replaces the rule") {
  for_each_device_and_dtype([](Device device, DType dtype) {
  const double tolerance = dtype == DType::f64 ? 1e-13 : 2e-6;
  auto parameter = [&](const std::vector<double>& v, const Shape& shape) {
    return from_vector(v, shape).to(dtype).to(device).requires_grad_();
  };
  // The default group: a matrix (decayed by the default rule) and a vector (not). Then a vector whose group
  // sets a decay (so it decays, at half the rate), and a matrix whose group turns decay off.
  std::vector<double> matrix = {1.0, -2.0, 0.5, 3.0}, vector = {0.25, -0.75}, decayed_vector = {2.0, -1.0},
                      plain_matrix = {-1.5, 0.5};
  Tensor w = parameter(matrix, {2, 2}), b = parameter(vector, {2}), c = parameter(decayed_vector, {2});
  Tensor u = parameter(plain_matrix, {1, 2});
  const nn::AdamWOptions options{.lr = 0.1, .beta1 = 0.8, .beta2 = 0.9, .eps = 1e-8, .weight_decay = 0.5};
  nn::AdamW optimizer({{.parameters = {w, b}},
                       {.parameters = {c}, .lr_scale = 0.5, .weight_decay = 0.2},
                       {.parameters = {u}, .lr_scale = 2.0, .weight_decay = 0.0}},
                      options);
  CHECK(optimizer.parameters().size() == 4);
  CHECK(optimizer.state().size() == 8);  // m and v of w, b, c, u in that order

  ReferenceAdamW ref_w{0.1, 0.8, 0.9, 1e-8, 0.5, {}, {}, 0}, ref_b = ref_w;
  ReferenceAdamW ref_c{0.05, 0.8, 0.9, 1e-8, 0.2, {}, {}, 0}, ref_u{0.2, 0.8, 0.9, 1e-8, 0.0, {}, {}, 0};
  const std::vector<std::vector<double>> gw = {{0.5, -4.0, 1e-3, 2.0}, {-1.0, 2.0, 0.0, 0.5}, {1, 1, 1, 1}};
  const std::vector<std::vector<double>> gb = {{-3.0, 0.125}, {1.0, -1.0}, {0.0, 2.0}};
  const std::vector<std::vector<double>> gc = {{1.0, 2.0}, {-0.5, 0.25}, {4.0, -4.0}};
  const std::vector<std::vector<double>> gu = {{0.75, -0.25}, {2.0, 1.0}, {-1.0, 0.5}};
  for (int s = 0; s < 3; ++s) {
    CAPTURE(s + 1);
    if (s == 2) {  // the schedule's call: every group's rate follows, keeping its scale
      optimizer.set_lr(0.04);
      ref_w.lr = ref_b.lr = 0.04;
      ref_c.lr = 0.02;
      ref_u.lr = 0.08;
    }
    set_gradient(w, gw[s]);
    set_gradient(b, gb[s]);
    set_gradient(c, gc[s]);
    set_gradient(u, gu[s]);
    optimizer.step();
    ref_w.step(matrix, gw[s], true);
    ref_b.step(vector, gb[s], false);
    ref_c.step(decayed_vector, gc[s], true);
    ref_u.step(plain_matrix, gu[s], true);  // decays by 0: the same as no decay
    check_close(values(w), matrix, tolerance);
    check_close(values(b), vector, tolerance);
    check_close(values(c), decayed_vector, tolerance);
    check_close(values(u), plain_matrix, tolerance);
  }
  });
}

namespace {

// PyTorch's SGD, written out: L2 decay into the gradient, the momentum buffer (the gradient itself on the first
// step), Nesterov's look-ahead.
struct ReferenceSGD {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
  std::vector<double> buffer;
  int t = 0;

  void step(std::vector<double>& p, const std::vector<double>& g) {
    ++t;
    if (buffer.empty()) buffer.assign(p.size(), 0.0);
    for (std::size_t i = 0; i < p.size(); ++i) {
      double d = g[i] + weight_decay * p[i];
      if (momentum != 0) {
        buffer[i] = t == 1 ? d : momentum * buffer[i] + (1 - dampening) * d;
        d = nesterov ? d + momentum * buffer[i] : buffer[i];
      }
      p[i] -= lr * d;
    }
  }
};

}  // namespace

TEST_CASE("SGD: plain, with momentum and dampening, and Nesterov, against PyTorch's rule") {
  for_each_device_and_dtype([](Device device, DType dtype) {
  const double tolerance = dtype == DType::f64 ? 1e-14 : 1e-6;
  const std::vector<std::vector<double>> gradients = {{1.0, -2.0}, {0.5, 0.5}, {-1.0, 4.0}};
  const std::vector<nn::SGDOptions> cases = {
      {.lr = 0.1, .weight_decay = 0.01},
      {.lr = 0.1, .momentum = 0.9, .dampening = 0.25, .weight_decay = 0.01},
      {.lr = 0.05, .momentum = 0.5, .weight_decay = 0.0, .nesterov = true},
  };
  for (const auto& options : cases) {
    CAPTURE(options.momentum);
    CAPTURE(options.nesterov);
    std::vector<double> expected = {1.0, 2.0};
    Tensor p = from_vector(expected, {2}).to(dtype).to(device).requires_grad_();
    nn::SGD optimizer({p}, options);
    CHECK(optimizer.state().size() == (options.momentum != 0 ? 1u : 0u));
    ReferenceSGD reference{options.lr, options.momentum, options.dampening, options.weight_decay,
                           options.nesterov, {}, 0};
    for (const auto& g : gradients) {
      set_gradient(p, g);
      optimizer.step();
      reference.step(expected, g);
      check_close(values(p), expected, tolerance);
    }
  }
  // The first step by hand, with momentum 0.9 and dampening 0.25: the buffer is the decayed gradient
  // itself (not 0.75 of it), so p = 1 - 0.1 * (1 + 0.01 * 1) = 0.899; the second step dampens:
  // buf = 0.9 * 1.01 + 0.75 * (0.5 + 0.01 * 0.899) and p = 0.899 - 0.1 * buf.
  Tensor p = from_vector(std::vector<double>{1.0}, {1}).to(dtype).to(device).requires_grad_();
  nn::SGD optimizer({p}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.25, .weight_decay = 0.01});
  set_gradient(p, {1.0});
  optimizer.step();
  check_close(values(p), {0.899}, tolerance);
  set_gradient(p, {0.5});
  optimizer.step();
  check_close(values(p), {0.899 - 0.1 * (0.9 * 1.01 + 0.75 * (0.5 + 0.01 * 0.899))}, tolerance);
  });
}

TEST_CASE("SGD: groups, parameters that start late, and a resumed state that continues exactly") {
  const nn::SGDOptions options{.lr = 0.1, .momentum = 0.9, .dampening = 0.5, .weight_decay = 0.1};
  Tensor a = from_vector(std::vector<double>{1.0, -1.0}, {2}).requires_grad_();
  Tensor late = from_vector(std::vector<double>{2.0}, {1}).requires_grad_();
  nn::SGD optimizer({{.parameters = {a}}, {.parameters = {late}, .lr_scale = 0.5, .weight_decay = 0.0}}, options);
  std::vector<double> expected_a = {1.0, -1.0}, expected_late = {2.0};
  ReferenceSGD ref_a{0.1, 0.9, 0.5, 0.1, false, {}, 0}, ref_late{0.05, 0.9, 0.5, 0.0, false, {}, 0};
  // Step 1 without a gradient for `late`: its buffer starts at zero on step 2, so that step is dampened.
  set_gradient(a, {0.5, 0.25});
  optimizer.step();
  ref_a.step(expected_a, {0.5, 0.25});
  ++ref_late.t;
  check_close(values(late), expected_late, 0.0);
  set_gradient(a, {-1.0, 1.0});
  set_gradient(late, {2.0});
  optimizer.step();
  ref_a.step(expected_a, {-1.0, 1.0});
  ref_late.step(expected_late, {2.0});
  check_close(values(a), expected_a, 1e-14);
  check_close(values(late), {2.0 - 0.05 * 0.5 * 2.0}, 1e-14);

  // Another optimizer over copies of the parameters, given this one's state, makes the same next step.
  Tensor a2 = a.detach().clone().requires_grad_(), late2 = late.detach().clone().requires_grad_();
  nn::SGD resumed({{.parameters = {a2}}, {.parameters = {late2}, .lr_scale = 0.5, .weight_decay = 0.0}}, options);
  resumed.load_state(optimizer.state(), optimizer.steps());
  CHECK(resumed.steps() == 2);
  for (Tensor* p : {&a, &late, &a2, &late2})
    set_gradient(*p, std::vector<double>(static_cast<std::size_t>(p->numel()), 0.75));
  optimizer.step();
  resumed.step();
  CHECK(values(a2) == values(a));
  CHECK(values(late2) == values(late));
}
