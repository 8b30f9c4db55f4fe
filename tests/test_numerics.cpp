// Every kernel family at the edges of the floating-point range, against references computed here in long
// double: logits far beyond exp's range (large, very negative, the maximum in the last position), -inf masks,
// huge magnitudes with a small spread (layer norm's cancellation), NaN in reductions, denormals, and values
// that do not change (the elliptical metric's 0 / 0). Well-scaled inputs hide a missing guard; these do not.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "helpers.hpp"

using namespace ellipse;

namespace {

using Rows = std::vector<std::vector<double>>;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<double> values(const Tensor& t) { return t.to(DType::f64).to(Device::cpu()).to_vector<double>(); }

Tensor matrix(const Rows& rows, DType dtype, Device device) {
  std::vector<double> flat;
  for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  const auto cols = static_cast<std::int64_t>(rows.front().size());
  return from_vector(flat, {static_cast<std::int64_t>(rows.size()), cols}).to(dtype).to(device);
}

// Element i matches want[i] to the relative tolerance (measured against 1 + |want|), NaN matches NaN and an
// infinity matches the same infinity.
void check_close(const std::vector<double>& got, const std::vector<double>& want, double tolerance) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    CAPTURE(i);
    CAPTURE(got[i]);
    CAPTURE(want[i]);
    if (std::isnan(want[i]) || std::isinf(want[i]))
      CHECK((std::isnan(want[i]) ? std::isnan(got[i]) : got[i] == want[i]));
    else
      CHECK(std::abs(got[i] - want[i]) <= tolerance * (1.0 + std::abs(want[i])));
  }
}

struct Case {
  DType dtype;
  Device device;
  double tolerance;
};

// f32 and f64 on the CPU, f32 on every other available device.
std::vector<Case> cases() {
  std::vector<Case> out;
  for (const auto& d : testing::available_devices()) {
    out.push_back({DType::f32, d.device, 2e-5});
    if (d.has_f64) out.push_back({DType::f64, d.device, 1e-12});
  }
  return out;
}

// softmax (or log_softmax) of one row, in long double with the maximum subtracted first.
std::vector<double> reference_softmax(const std::vector<double>& row, bool log) {
  long double max = -kInf;
  for (double x : row) max = std::max<long double>(max, x);
  if (std::isinf(max) && max < 0) return std::vector<double>(row.size(), kNaN);  // as PyTorch: 0 / 0
  long double total = 0;
  for (double x : row) total += std::exp(static_cast<long double>(x) - max);
  std::vector<double> out;
  for (double x : row) {
    const long double shifted = static_cast<long double>(x) - max;
    out.push_back(static_cast<double>(log ? shifted - std::log(total) : std::exp(shifted) / total));
  }
  return out;
}

std::vector<double> reference_rows(const Rows& rows, bool log) {
  std::vector<double> out;
  for (const auto& row : rows) {
    const auto r = reference_softmax(row, log);
    out.insert(out.end(), r.begin(), r.end());
  }
  return out;
}

// Rows whose logits lie far outside exp's range; each row's largest logit is in its last position in some
// rows and first in others, so a maximum that skips an element overflows.
const Rows kExtremeLogits = {
    {0.0, 1.0, 100.0},                // the maximum last, 100 beyond exp's f32 range from the others
    {100.0, 0.0, 1.0},                // the same, maximum first
    {-1e4, -1e4 - 1.0, -1e4 + 2.0},   // all far below exp's range: everything underflows without the shift
    {3e4, -3e4, 0.0},                 // a spread no exponential survives
    {-kInf, 0.0, 1.0},                // a masked logit
    {-kInf, -kInf, 5e3},              // all but one masked, the survivor large
    {-kInf, -kInf, -kInf},            // all masked: NaN, as in PyTorch
};

}  // namespace

TEST_CASE("softmax and log_softmax: logits beyond exp's range, -inf masks, along contiguous and strided axes") {
  for (const auto& c : cases()) {
    CAPTURE(c.device.str());
    CAPTURE(dtype_name(c.dtype));
    const Tensor x = matrix(kExtremeLogits, c.dtype, c.device);
    for (const bool log : {false, true}) {
      CAPTURE(log);
      const auto want = reference_rows(kExtremeLogits, log);
      // f32 logits near 1e4 are 1e-3 apart, and log_softmax subtracts a logsumexp of that size.
      const double tolerance = log && c.dtype == DType::f32 ? 1e-3 : c.tolerance;
      const Tensor along_rows = log ? log_softmax(x, 1) : softmax(x, 1);
      check_close(values(along_rows), want, tolerance);
      // The same rows as columns: the kernel's lanes are then `inner` apart.
      const Tensor columns = contiguous(transpose(x, 0, 1));
      const Tensor along_columns = log ? log_softmax(columns, 0) : softmax(columns, 0);
      check_close(values(contiguous(transpose(along_columns, 0, 1))), want, tolerance);
    }
  }
}

TEST_CASE("softmax backward at extreme logits: finite, and zero for the saturated entries") {
  for (const auto& c : cases()) {
    CAPTURE(c.device.str());
    CAPTURE(dtype_name(c.dtype));
    // Row 0 saturates (probabilities 0 and 1): every gradient is 0. Row 1 has two equal large logits.
    const Rows rows = {{0.0, 100.0}, {5e3, 5e3}};
    Tensor x = matrix(rows, c.dtype, c.device).requires_grad_();
    const Tensor weights = matrix({{1.0, 2.0}, {1.0, 3.0}}, c.dtype, c.device);
    sum(mul(softmax(x, 1), weights)).backward();
    // d/dx_j sum_i w_i p_i = p_j (w_j - sum_i w_i p_i): row 1 has p = (1/2, 1/2), so (-1/2, 1/2).
    check_close(values(x.grad()), {0.0, 0.0, -0.5, 0.5}, c.tolerance);
  }
}

TEST_CASE("scaled_softmax: large scaled scores with the causal mask, the visible maximum last") {
  for (const auto& c : cases()) {
    CAPTURE(c.device.str());
    CAPTURE(dtype_name(c.dtype));
    // Causal 3 x 3: query i sees keys 0..i. Scaled by 4, the scores span far beyond exp's range.
    const Rows scores = {{-30.0, 1e6, 1e6}, {0.0, 40.0, -1e6}, {-40.0, 0.0, 40.0}};
    const Tensor y = scaled_softmax(matrix(scores, c.dtype, c.device), 4.0, /*causal=*/true);
    std::vector<double> want;
    for (std::size_t i = 0; i < scores.size(); ++i) {
      std::vector<double> visible;
      for (std::size_t j = 0; j <= i; ++j) visible.push_back(4.0 * scores[i][j]);
      auto row = reference_softmax(visible, false);
      row.resize(scores.size(), 0.0);  // masked keys: probability 0
      want.insert(want.end(), row.begin(), row.end());
    }
    check_close(values(y), want, c.tolerance);
  }
}

TEST_CASE("scaled_dot_product_attention: scores far beyond exp's range, with and without the causal mask") {
  // One head, 5 queries and keys of 4 features whose scores reach about 1e4: each softmax row is one-hot up
  // to exp's underflow. The output must be the reference's, and the gradients finite.
  constexpr std::int64_t n = 5, dh = 4;
  std::vector<double> q, k, v;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto x = static_cast<double>(i);
    q.insert(q.end(), {100.0 * (x + 1), -80.0, 20.0 * x, 5.0});
    k.insert(k.end(), {50.0 - 10.0 * x, 3.0 * x, -20.0, 40.0 - 25.0 * x});
    v.insert(v.end(), {x, -x, 0.5 * x, 1.0});
  }
  const double scale = 0.5;
  for (const bool causal : {false, true}) {
    std::vector<double> want;
    for (std::int64_t i = 0; i < n; ++i) {
      std::vector<double> scores;
      for (std::int64_t j = 0; j < (causal ? i + 1 : n); ++j) {
        double dot = 0;
        for (std::int64_t d = 0; d < dh; ++d) dot += q[i * dh + d] * k[j * dh + d];
        scores.push_back(scale * dot);
      }
      const auto p = reference_softmax(scores, false);
      for (std::int64_t d = 0; d < dh; ++d) {
        double out = 0;
        for (std::size_t j = 0; j < p.size(); ++j) out += p[j] * v[j * dh + d];
        want.push_back(out);
      }
    }
    for (const auto& c : cases()) {
      CAPTURE(causal);
      CAPTURE(c.device.str());
      CAPTURE(dtype_name(c.dtype));
      auto operand = [&](const std::vector<double>& values_of) {
        return from_vector(values_of, {1, 1, n, dh}).to(c.dtype).to(c.device).requires_grad_();
      };
      const Tensor qt = operand(q), kt = operand(k), vt = operand(v);
      const Tensor out = scaled_dot_product_attention(qt, kt, vt, {}, scale, causal);
      check_close(values(out), want, c.tolerance);
      sum(out).backward();
      for (const Tensor& grad : {qt.grad(), kt.grad(), vt.grad()})
        for (double g : values(grad)) CHECK(std::isfinite(g));
    }
  }
}

TEST_CASE("cross_entropy: logits beyond exp's range, the largest last; ignored rows get exactly 0") {
  for (const auto& c : cases()) {
    CAPTURE(c.device.str());
    CAPTURE(dtype_name(c.dtype));
    const Rows logits = {{0.0, 100.0, 0.0, 200.0}, {1e4, 0.0, -1e4, 0.0}, {-1e4, -1e4 - 1, -1e4 + 1, -1e4},
                         {5.0, 6.0, 7.0, 8.0}};
    const std::vector<std::int64_t> targets = {1, 2, 3, -100};  // the last row is ignored
    Tensor x = matrix(logits, c.dtype, c.device).requires_grad_();
    // The gradient's buffer comes from the allocator's cache: fill a block of its size with NaN first, so that
    // a row the kernel forgets to write shows up.
    { (void)full({4, 4}, kNaN, c.dtype, c.device); }
    const Tensor loss = cross_entropy(x, from_vector(targets, {4}, c.device));
    // Loss per row: logsumexp(row) - row[target], averaged over the 3 rows that count.
    std::vector<double> want_grad;
    long double total = 0;
    for (std::size_t r = 0; r < logits.size(); ++r) {
      const auto log_p = reference_softmax(logits[r], true);
      for (std::size_t j = 0; j < log_p.size(); ++j) {
        const bool counted = targets[r] >= 0;
        const double one_hot = static_cast<std::int64_t>(j) == targets[r] ? 1.0 : 0.0;
        want_grad.push_back(counted ? (std::exp(log_p[j]) - one_hot) / 3.0 : 0.0);
      }
      if (targets[r] >= 0) total -= log_p[static_cast<std::size_t>(targets[r])];
    }
    check_close({loss.item()}, {static_cast<double>(total / 3)}, c.tolerance);
    loss.backward();
    const auto grad = values(x.grad());
    // In f32, logits near 1e4 are 1e-3 apart: their probabilities are that exact.
    check_close(grad, want_grad, c.dtype == DType::f32 ? 1e-3 : c.tolerance);
    for (std::size_t j = 12; j < 16; ++j) CHECK(grad[j] == 0.0);  // the ignored row, exactly
  }
}

TEST_CASE("layer_norm: a huge mean with a small spread (no cancellation), forward and backward") {
  for (const auto& c : cases()) {
    CAPTURE(c.device.str());
    CAPTURE(dtype_name(c.dtype));
    // Offsets around a mean that is exact in the dtype and far larger than the spread: E[x^2] - mean^2 would
    // lose every digit of the variance here.
    const double centre = c.dtype == DType::f64 ? 0x1p26 : 0x1p12;
    const std::vector<double> offsets = {-1.5, -1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 1.5};
    std::vector<double> row;
    for (double o : offsets) row.push_back(centre + o);
    const Rows rows = {row, offsets};  // the second row: the same spread around 0
    Tensor x = matrix(rows, c.dtype, c.device).requires_grad_();
    const Tensor weight = from_vector(std::vector<double>(8, 2.0), {8}).to(c.dtype).to(c.device);
    const Tensor bias = from_vector(std::vector<double>(8, 0.5), {8}).to(c.dtype).to(c.device);
    const double eps = 1e-5;
    long double variance = 0;
    for (double o : offsets) variance += static_cast<long double>(o) * o / 8;
    const long double inv = 1 / std::sqrt(variance + static_cast<long double>(eps));
    std::vector<double> want;
    for (int r = 0; r < 2; ++r)
      for (double o : offsets) want.push_back(static_cast<double>(o * inv * 2 + 0.5L));
    const Tensor y = layer_norm(x, weight, bias, eps);
    check_close(values(y), want, c.dtype == DType::f64 ? 1e-9 : 1e-4);
    // dx = inv * (g w - mean(g w) - xhat * mean(g w xhat)) per row, for the upstream gradient g = 1..8.
    const std::vector<double> upstream = {1, 2, 3, 4, 5, 6, 7, 8};
    long double mean_gw = 0, mean_gw_xhat = 0;
    for (std::size_t j = 0; j < 8; ++j) {
      mean_gw += upstream[j] * 2.0L / 8;
      mean_gw_xhat += upstream[j] * 2.0L * offsets[j] * inv / 8;
    }
    sum(mul(y, matrix({upstream, upstream}, c.dtype, c.device))).backward();
    std::vector<double> want_grad;
    for (int r = 0; r < 2; ++r)
      for (std::size_t j = 0; j < 8; ++j)
        want_grad.push_back(static_cast<double>(inv * (upstream[j] * 2.0L - mean_gw - offsets[j] * inv * mean_gw_xhat)));
    check_close(values(x.grad()), want_grad, c.dtype == DType::f64 ? 1e-9 : 1e-4);
  }
}

TEST_CASE("reductions: NaN propagates through max, huge f32 values sum without overflow, denormals add up") {
  for (const auto& c : cases()) {
    CAPTURE(c.device.str());
    CAPTURE(dtype_name(c.dtype));
    const Rows rows = {{1.0, kNaN, 3.0}, {-kInf, -kInf, -kInf}, {kNaN, -1.0, 2.0}, {1e30, -1e30, 5.0}};
    const Tensor x = matrix(rows, c.dtype, c.device);
    check_close(values(max(x, {1})), {kNaN, -kInf, kNaN, 1e30}, c.tolerance);  // contiguous rows
    check_close(values(max(contiguous(transpose(x, 0, 1)), {0})), {kNaN, -kInf, kNaN, 1e30}, c.tolerance);  // strided
    // 3e38 + 3e38 overflows f32, but the sum accumulates in double: the result 3e38 fits again.
    const Tensor big = from_vector<double>({3e38, 3e38, -3e38}, {3}).to(c.dtype).to(c.device);
    check_close(values(sum(big)), {3e38}, c.tolerance);
    // A thousand copies of the smallest normal's 1/8 (a denormal in f32) sum to 125 times the smallest normal.
    const double tiny = std::numeric_limits<float>::min() / 8;
    const Tensor denormals = full({1000}, tiny, c.dtype, c.device);
    CHECK(sum(denormals).item() == doctest::Approx(1000 * tiny).epsilon(1e-6));
    CHECK(values(cumsum(denormals, 0)).back() == doctest::Approx(1000 * tiny).epsilon(1e-5));
  }
}

TEST_CASE("unary maps at extreme arguments: saturation without NaN, denormal inputs and results") {
  for (const auto& c : cases()) {
    CAPTURE(c.device.str());
    CAPTURE(dtype_name(c.dtype));
    const std::vector<double> big = {-1e4, -100.0, -30.0, 30.0, 100.0, 1e4};
    const Tensor x = from_vector(big, {6}).to(c.dtype).to(c.device);
    std::vector<double> want_sigmoid, want_tanh, want_gelu, want_relu;
    for (double v : big) {
      want_sigmoid.push_back(static_cast<double>(1 / (1 + std::exp(-static_cast<long double>(v)))));
      want_tanh.push_back(std::tanh(v));
      want_gelu.push_back(v > 0 ? v : 0.0);  // GELU saturates to the identity and to 0 (to within 1e-190)
      want_relu.push_back(v > 0 ? v : 0.0);
    }
    // Saturated results are compared absolutely near 0: sigmoid(-100) is 4e-44, below what f32 resolves.
    check_close(values(sigmoid(x)), want_sigmoid, c.tolerance);
    check_close(values(tanh(x)), want_tanh, c.tolerance);
    check_close(values(gelu(x)), want_gelu, c.tolerance);
    check_close(values(relu(x)), want_relu, 0.0);
    // exp at both ends: overflow to inf past the dtype's largest value, underflow to (almost) 0.
    const double overflow = c.dtype == DType::f64 ? 710.0 : 89.0;
    check_close(values(exp(from_vector<double>({overflow, -1e4}, {2}).to(c.dtype).to(c.device))), {kInf, 0.0},
                c.tolerance);
    // Denormal inputs are numbers, not zeros: log and sqrt of the smallest f32 normal / 8.
    const double tiny = std::numeric_limits<float>::min() / 8;
    const Tensor t = full({2}, tiny, c.dtype, c.device);
    check_close(values(log(t)), {std::log(tiny), std::log(tiny)}, c.tolerance);
    const auto roots = values(sqrt(t));
    CHECK(roots[0] == doctest::Approx(std::sqrt(tiny)).epsilon(1e-6));
  }
}

TEST_CASE("elliptical_metric: unchanged values give a zero metric, not 0 / 0; huge differences normalise to 1") {
  for (const auto& c : cases()) {
    CAPTURE(c.device.str());
    CAPTURE(dtype_name(c.dtype));
    // [B=1, H=2, N=3, dh=2]: head 0 never changes; head 1 changes by 1e30 in its second component only.
    const std::vector<double> previous = {1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0};
    const std::vector<double> current = {1, 2, 3, 4, 5, 6, 0, 1e30, 0, 1e30, 0, 1e30};
    const Tensor v = from_vector(current, {1, 2, 3, 2}).to(c.dtype).to(c.device);
    const Tensor v_prev = from_vector(previous, {1, 2, 3, 2}).to(c.dtype).to(c.device);
    for (const bool causal : {false, true}) {
      CAPTURE(causal);
      const auto result = elliptical_metric(v, v_prev, causal);
      const int rows = causal ? 3 : 1;
      std::vector<double> want;
      for (const double changed : {0.0, 1.0}) {  // head 0, then head 1
        for (int r = 0; r < rows; ++r) {
          want.push_back(0.0);
          want.push_back(changed);
        }
      }
      check_close(values(result.metric), want, c.tolerance);
      check_close(values(result.sum), {0.0, 0.0, 0.0, 3e30}, c.tolerance);
    }
  }
}
