// Multi-head attention, standard and elliptical (docs/elliptical-attention.md): the layer against
// an independent double-precision reference, gradients and the stop-gradient on the metric m, causality
// of the three metric estimators inside a GPT, the random ablation, incremental decoding, and the fused
// attention op against the explicit path, alone and inside the layer, on every device.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "backends/cpu/sgemm.hpp"
#include "helpers.hpp"
#include "models/gpt.hpp"
#include "nn/attention.hpp"
#include "nn/block.hpp"

using namespace ellipse;

namespace {

using Vec = std::vector<double>;

// ---- an independent reference: plain loops in double, following the spec's formulas -------------------

enum class RefMetric { none, sequence, causal };

struct RefWeights {
  int d = 0, heads = 0;
  Vec wqkv, bqkv, wproj, bproj;  // [3d, d], [3d], [d, d], [d] (PyTorch's Linear layout)
};

// Elliptical metric from v and v_prev laid out [B, H, N, dh]. Returns [B, H, 1, dh] (sequence) or
// [B, H, N, dh] (causal): s = mean of |v - v_prev| over all tokens or the prefix, m = s / max(max_d s, 1e-12).
Vec reference_metric(const Vec& v, const Vec& v_prev, int batch, int heads, int n, int dh, RefMetric mode) {
  const int rows = mode == RefMetric::causal ? n : 1;
  Vec m(static_cast<std::size_t>(batch * heads * rows * dh));
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < rows; ++i) {
        const int last = mode == RefMetric::causal ? i : n - 1;  // tokens 0..last enter the mean
        Vec s(static_cast<std::size_t>(dh), 0.0);
        for (int t = 0; t <= last; ++t)
          for (int e = 0; e < dh; ++e) {
            const std::size_t at = static_cast<std::size_t>(((b * heads + h) * n + t) * dh + e);
            s[static_cast<std::size_t>(e)] += std::abs(v[at] - v_prev[at]);
          }
        double top = 0;
        for (auto& value : s) top = std::max(top, value /= (last + 1));
        for (int e = 0; e < dh; ++e)
          m[static_cast<std::size_t>(((b * heads + h) * rows + i) * dh + e)] =
              s[static_cast<std::size_t>(e)] / std::max(top, 1e-12);
      }
  return m;
}

struct RefResult {
  Vec out;    // [B, N, d]
  Vec v;      // [B, H, N, dh]
  Vec m;      // see reference_metric; empty for standard attention
  Vec probs;  // [B, H, N, N]
};

// x [B, N, d]; v_prev [B, H, N, dh] (used when metric != none).
RefResult reference_attention(const Vec& x, int batch, int n, const RefWeights& w, bool causal, RefMetric metric,
                              const Vec& v_prev) {
  const int d = w.d, heads = w.heads, dh = d / heads;
  auto at4 = [&](int b, int h, int t, int e) { return static_cast<std::size_t>(((b * heads + h) * n + t) * dh + e); };
  // qkv = x W^T + b, then [B, N, 3, H, dh]: q, k, v each H consecutive heads of dh features.
  Vec q(static_cast<std::size_t>(batch * heads * n * dh)), k(q.size()), v(q.size());
  for (int b = 0; b < batch; ++b)
    for (int t = 0; t < n; ++t)
      for (int o = 0; o < 3 * d; ++o) {
        double y = w.bqkv[static_cast<std::size_t>(o)];
        for (int i = 0; i < d; ++i)
          y += x[static_cast<std::size_t>((b * n + t) * d + i)] * w.wqkv[static_cast<std::size_t>(o * d + i)];
        const int part = o / d, h = (o % d) / dh, e = o % dh;
        (part == 0 ? q : part == 1 ? k : v)[at4(b, h, t, e)] = y;
      }
  RefResult r;
  r.v = v;
  if (metric != RefMetric::none) r.m = reference_metric(v, v_prev, batch, heads, n, dh, metric);
  Vec concat(static_cast<std::size_t>(batch * n * d), 0.0);
  r.probs.assign(static_cast<std::size_t>(batch * heads * n * n), 0.0);
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < n; ++i) {
        Vec scores(static_cast<std::size_t>(n));
        for (int j = 0; j < n; ++j) {
          double dot = 0;
          for (int e = 0; e < dh; ++e) {
            double scale = 1;
            if (metric == RefMetric::sequence) scale = r.m[static_cast<std::size_t>((b * heads + h) * dh + e)];
            if (metric == RefMetric::causal) scale = r.m[at4(b, h, i, e)];
            dot += q[at4(b, h, i, e)] * scale * k[at4(b, h, j, e)];
          }
          scores[static_cast<std::size_t>(j)] =
              causal && j > i ? -std::numeric_limits<double>::infinity() : dot / std::sqrt(double(dh));
        }
        const double top = *std::max_element(scores.begin(), scores.end());
        double total = 0;
        for (auto& s : scores) total += (s = std::exp(s - top));
        for (int j = 0; j < n; ++j) {
          const double p = scores[static_cast<std::size_t>(j)] / total;
          r.probs[static_cast<std::size_t>(((b * heads + h) * n + i) * n + j)] = p;
          for (int e = 0; e < dh; ++e)
            concat[static_cast<std::size_t>((b * n + i) * d + h * dh + e)] += p * v[at4(b, h, j, e)];
        }
      }
  r.out.assign(static_cast<std::size_t>(batch * n * d), 0.0);
  for (int row = 0; row < batch * n; ++row)
    for (int o = 0; o < d; ++o) {
      double y = w.bproj[static_cast<std::size_t>(o)];
      for (int i = 0; i < d; ++i)
        y += concat[static_cast<std::size_t>(row * d + i)] * w.wproj[static_cast<std::size_t>(o * d + i)];
      r.out[static_cast<std::size_t>(row * d + o)] = y;
    }
  return r;
}

// ---- helpers -----------------------------------------------------------------------------------------

// Deterministic "hand-set" values: small, varied, no two rows alike.
Vec pattern(std::size_t count, int a, int b, double scale) {
  Vec out(count);
  for (std::size_t i = 0; i < count; ++i)
    out[i] = scale * static_cast<double>((static_cast<int>(i) * a + b) % 13 - 6);
  return out;
}

void set_parameter(const nn::Module& module, const std::string& name, const Vec& values) {
  Tensor p = module.parameter(name);
  REQUIRE(static_cast<std::size_t>(p.numel()) == values.size());
  NoGradGuard no_grad;
  p.copy_(from_vector(values, p.shape()).to(p.dtype()));
}

RefWeights set_weights(const nn::Module& layer, int d, int heads) {
  RefWeights w{d, heads, pattern(static_cast<std::size_t>(3 * d * d), 5, 1, 0.11),
               pattern(static_cast<std::size_t>(3 * d), 3, 2, 0.05), pattern(static_cast<std::size_t>(d * d), 7, 4, 0.09),
               pattern(static_cast<std::size_t>(d), 2, 5, 0.03)};
  set_parameter(layer, "qkv.weight", w.wqkv);
  set_parameter(layer, "qkv.bias", w.bqkv);
  set_parameter(layer, "proj.weight", w.wproj);
  set_parameter(layer, "proj.bias", w.bproj);
  return w;
}

double max_abs_diff(const Vec& a, const Vec& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  return max_abs_diff(a.to_vector<double>(), b.to_vector<double>());
}

GPTConfig tiny_gpt(std::string attention, nn::MetricMode metric, std::int64_t layers = 3) {
  GPTConfig c;
  c.name = "tiny";
  c.vocab = 10;
  c.n_layer = layers;
  c.d_model = 16;
  c.n_head = 2;
  c.seq_len = 12;
  c.batch = 2;
  c.attention = attention;
  c.metric = metric;
  return c;
}

// GPT-2 initialisation (std 0.02) makes the scores nearly flat, which hides what the metric does; larger
// random weights make every effect visible in the logits.
void randomize(const nn::Module& module, std::uint64_t seed, double scale = 0.5) {
  Generator gen(seed);
  NoGradGuard no_grad;
  for (Tensor p : module.parameters()) p.copy_(mul(randn(p.shape(), gen), scale));
}

Tensor token_ids(const std::vector<std::int64_t>& ids, std::int64_t batch) {
  return from_vector(ids, {batch, static_cast<std::int64_t>(ids.size()) / batch});
}

// Largest |a - b| over positions [from, to) of logits [B, N, V].
double position_diff(const Tensor& a, const Tensor& b, std::int64_t from, std::int64_t to) {
  return to > from ? max_abs_diff(narrow(a, 1, from, to - from), narrow(b, 1, from, to - from)) : 0.0;
}

}  // namespace

// ---- 1. the layer against the reference -----------------------------------------------------------------

TEST_CASE("attention: standard and elliptical layers match a double-loop reference") {
  constexpr int kD = 4, kHeads = 2, kN = 3, kDh = kD / kHeads;
  for (int batch : {1, 2}) {
    const Vec x = pattern(static_cast<std::size_t>(batch * kN * kD), 4, 3, 0.2);
    const Vec v_prev = pattern(static_cast<std::size_t>(batch * kHeads * kN * kDh), 6, 1, 0.15);
    const Tensor tx = from_vector(x, {batch, kN, kD}).to(DType::f32);
    const Tensor tv_prev = from_vector(v_prev, {batch, kHeads, kN, kDh}).to(DType::f32);
    for (bool causal : {false, true}) {
      CAPTURE(batch);
      CAPTURE(causal);
      {
        nn::Attention layer(kD, kHeads);
        const RefWeights w = set_weights(layer, kD, kHeads);
        layer.keep_attention(true);
        const auto result = layer.forward(tx, causal);
        const RefResult ref = reference_attention(x, batch, kN, w, causal, RefMetric::none, {});
        CHECK(result.out.shape() == Shape{batch, kN, kD});
        CHECK(max_abs_diff(result.out.to_vector<double>(), ref.out) < 1e-5);
        CHECK(result.v.shape() == Shape{batch, kHeads, kN, kDh});
        CHECK(max_abs_diff(result.v.to_vector<double>(), ref.v) < 1e-5);
        CHECK(max_abs_diff(layer.last_attention().to_vector<double>(), ref.probs) < 1e-6);
        // Standard attention ignores v_prev.
        CHECK(max_abs_diff(layer.forward(tx, causal, tv_prev).out, result.out) == 0.0);
      }
      for (auto [mode, ref_mode] : {std::pair{nn::MetricMode::sequence, RefMetric::sequence},
                                    std::pair{nn::MetricMode::causal, RefMetric::causal}}) {
        CAPTURE(nn::metric_mode_name(mode));
        nn::EllipticalAttention layer(kD, kHeads, mode);
        const RefWeights w = set_weights(layer, kD, kHeads);
        layer.keep_attention(true);
        const auto result = layer.forward(tx, causal, tv_prev);
        const RefResult ref = reference_attention(x, batch, kN, w, causal, ref_mode, v_prev);
        CHECK(max_abs_diff(result.out.to_vector<double>(), ref.out) < 1e-5);
        CHECK(max_abs_diff(result.v.to_vector<double>(), ref.v) < 1e-5);

        // m: one row per (batch, head) for sequence, one per query row for causal; largest entry exactly 1.
        const Tensor& m = layer.last_metric();
        REQUIRE(m.defined());
        const std::int64_t rows = mode == nn::MetricMode::causal ? kN : 1;
        CHECK(m.shape() == Shape{batch, kHeads, rows, kDh});
        CHECK(max_abs_diff(m.to_vector<double>(), ref.m) < 1e-5);
        const Vec mv = m.to_vector<double>();
        for (std::size_t row = 0; row < mv.size() / kDh; ++row) {
          const auto first = mv.begin() + static_cast<std::ptrdiff_t>(row * kDh);
          CHECK(*std::max_element(first, first + kDh) == 1.0);
          CHECK(*std::min_element(first, first + kDh) >= 0.0);
        }
        // The metric matters here: the result differs from standard attention with the same weights.
        nn::Attention plain(kD, kHeads);
        set_weights(plain, kD, kHeads);
        CHECK(max_abs_diff(plain.forward(tx, causal).out, result.out) > 1e-4);

        // Attention rows are distributions, and the causal mask zeroes the future exactly.
        const Tensor& probs = layer.last_attention();
        CHECK(probs.shape() == Shape{batch, kHeads, kN, kN});
        CHECK(max_abs_diff(probs.to_vector<double>(), ref.probs) < 1e-6);
        const Vec pv = probs.to_vector<double>();
        for (std::size_t row = 0; row < pv.size() / kN; ++row) {
          double total = 0;
          for (std::size_t j = 0; j < static_cast<std::size_t>(kN); ++j) {
            total += pv[row * kN + j];
            if (causal && j > row % kN) CHECK(pv[row * kN + j] == 0.0);
          }
          CHECK(total == doctest::Approx(1.0).epsilon(1e-6));
        }
      }
    }
  }
}

// The fused op against the estimators written with ops (mean or cumsum of |v - v_prev|, then the max
// normalisation), on strided views of one qkv-like buffer as the layer passes them, with running sums.
TEST_CASE("elliptical_metric: equals the composition of ops, with and without earlier tokens, f32 and f64") {
  for (DType dtype : {DType::f32, DType::f64}) {
    CAPTURE(dtype_name(dtype));
    Generator gen(7);
    constexpr std::int64_t kB = 2, kH = 3, kN = 9, kDh = 5;
    // v and v_prev as select()s of [B, N, 2, H, dh] buffers permuted to [2, B, H, N, dh]: inner stride 1,
    // the others not contiguous.
    const Tensor both = permute(randn({kB, kN, 2, kH, kDh}, gen, dtype), {2, 0, 3, 1, 4});
    const Tensor v = select(both, 0, 0), v_prev = select(both, 0, 1);
    REQUIRE(!v.is_contiguous());
    const Tensor abs_diff = abs(sub(v, v_prev));
    const Tensor past_sum = abs(randn({kB, kH, 1, kDh}, gen, dtype));
    constexpr std::int64_t kPast = 4;
    const double tolerance = dtype == DType::f32 ? 1e-6 : 1e-12;
    for (bool causal : {false, true}) {
      CAPTURE(causal);
      for (bool with_past : {false, true}) {
        CAPTURE(with_past);
        const std::int64_t past = with_past ? kPast : 0;
        Tensor running = causal ? cumsum(abs_diff, 2) : sum(abs_diff, {2}, true);
        if (with_past) running = add(running, past_sum);
        const Tensor counts =
            causal ? reshape(arange(static_cast<double>(past + 1), static_cast<double>(past + kN + 1), 1.0, dtype),
                             {kN, 1})
                   : full({1}, static_cast<double>(past + kN), dtype);
        const Tensor expected = nn::normalize_metric(div(running, counts));
        const EllipticalMetric m =
            with_past ? elliptical_metric(v, v_prev, causal, past_sum, past) : elliptical_metric(v, v_prev, causal);
        CHECK(m.metric.shape() == Shape{kB, kH, causal ? kN : 1, kDh});
        CHECK(max_abs_diff(m.metric, expected) < tolerance);
        const Tensor expected_sum = with_past ? add(sum(abs_diff, {2}, true), past_sum) : sum(abs_diff, {2}, true);
        CHECK(max_abs_diff(m.sum, expected_sum) < tolerance * 10);
      }
    }
    // A view with another inner stride (dh transposed with N) gives the same as its contiguous copy.
    const Tensor vt = transpose(contiguous(transpose(v, 2, 3)), 2, 3);
    REQUIRE(vt.strides()[3] != 1);
    CHECK(max_abs_diff(elliptical_metric(vt, v_prev, true).metric, elliptical_metric(v, v_prev, true).metric) == 0.0);
  }
  // Identical values: s = 0 everywhere, and m is 0 rather than NaN.
  const Tensor v = ones({1, 1, 3, 4});
  CHECK(max_abs_diff(elliptical_metric(v, v, true).metric, zeros({1, 1, 3, 4})) == 0.0);
}

TEST_CASE("elliptical_metric: is a stop-gradient and rejects bad shapes, dtypes and running sums") {
  const Tensor v = ones({2, 2, 3, 4}).requires_grad_(true);
  const EllipticalMetric m = elliptical_metric(v, zeros({2, 2, 3, 4}), false);
  CHECK(!m.metric.requires_grad());
  CHECK(!m.sum.requires_grad());
  CHECK_ERROR(elliptical_metric(ones({2, 3, 4}), ones({2, 3, 4}), false), "elliptical_metric", "[2, 3, 4]",
              "[B, H, N, dh]");
  CHECK_ERROR(elliptical_metric(ones({2, 2, 3, 4}), ones({2, 2, 4, 4}), true), "elliptical_metric", "[2, 2, 4, 4]");
  CHECK_ERROR(elliptical_metric(ones({1, 1, 2, 2}), ones({1, 1, 2, 2}, DType::f64), true), "elliptical_metric",
              "dtypes");
  CHECK_ERROR(elliptical_metric(ones({1, 1, 2, 2}), ones({1, 1, 2, 2}), true, ones({1, 1, 2, 2}), 3),
              "elliptical_metric", "past_sum", "[1, 1, 1, 2]");
  CHECK_ERROR(elliptical_metric(ones({1, 1, 2, 2}), ones({1, 1, 2, 2}), true, {}, 3), "elliptical_metric", "past 3");
  CHECK_ERROR(elliptical_metric(ones({1, 1, 2, 2}), ones({1, 1, 2, 2}), true, ones({1, 1, 1, 2}), 0),
              "elliptical_metric", "past 0");
}

TEST_CASE("attention: an elliptical layer without v_prev is standard attention (layer 0)") {
  constexpr int kD = 4, kHeads = 2;
  const Tensor x = from_vector(pattern(2 * 3 * kD, 4, 3, 0.2), {2, 3, kD}).to(DType::f32);
  nn::Attention plain(kD, kHeads);
  set_weights(plain, kD, kHeads);
  nn::EllipticalAttention layer(kD, kHeads, nn::MetricMode::sequence);
  set_weights(layer, kD, kHeads);
  // After a call with v_prev, a call without it must not report the old metric.
  layer.forward(x, true, from_vector(pattern(2 * kHeads * 3 * 2, 6, 1, 0.15), {2, kHeads, 3, 2}).to(DType::f32));
  CHECK(layer.last_metric().defined());
  CHECK(max_abs_diff(layer.forward(x, true).out, plain.forward(x, true).out) == 0.0);
  CHECK_FALSE(layer.last_metric().defined());

  // Blocks: elliptical attention from layer 1 on, layer 0 always standard.
  const nn::BlockConfig config{.dim = 8, .heads = 2, .attention = "elliptical",
                               .metric = nn::MetricMode::causal};
  const nn::Block first(config, 0), second(config, 1);
  CHECK(dynamic_cast<const nn::EllipticalAttention*>(&first.attention()) == nullptr);
  const auto* elliptical = dynamic_cast<const nn::EllipticalAttention*>(&second.attention());
  REQUIRE(elliptical != nullptr);
  CHECK(elliptical->mode() == nn::MetricMode::causal);
  const nn::Block standard({.dim = 8, .heads = 2}, 1);
  CHECK(dynamic_cast<const nn::EllipticalAttention*>(&standard.attention()) == nullptr);

  // Misuse names the problem.
  CHECK_ERROR(layer.forward(x, true, zeros({2, kHeads, 4, 2})), "EllipticalAttention", "[2, 2, 4, 2]");
  CHECK_ERROR(layer.forward(zeros({2, 3, 5}), true), "Attention", "[2, 3, 5]");
  CHECK_ERROR(nn::Attention(6, 4), "Attention", "6", "4");
  CHECK_ERROR(nn::parse_metric_mode("global"), "global");
  CHECK_ERROR(nn::parse_attention_kind("linear"), "linear");
  CHECK(nn::parse_metric_mode("causal") == nn::MetricMode::causal);
  CHECK(nn::parse_attention_kind("elliptical") == "elliptical");
}

// ---- 2. gradients and the stop-gradient ----------------------------------------------------------------

namespace {

// An elliptical layer whose estimator returns a fixed m: the rest of its forward is the real one, and with
// m constant the finite differences measure exactly what backward() computes.
class FixedMetricAttention : public nn::EllipticalAttention {
 public:
  FixedMetricAttention(std::int64_t dim, std::int64_t heads, Tensor m)
      : EllipticalAttention(dim, heads, nn::MetricMode::sequence), m_(std::move(m)) {}

 protected:
  Tensor estimate_metric(const Tensor&, const Tensor&, nn::KVCache*) override { return m_; }

 private:
  Tensor m_;
};

// The spec written with ops, independently of nn::Attention: per-head slices of qkv, m a constant.
Tensor ops_attention(const Tensor& x, const Tensor& wqkv, const Tensor& bqkv, const Tensor& wproj, const Tensor& bproj,
                     const Tensor& m, std::int64_t heads, bool causal) {
  const std::int64_t n = x.shape()[1], d = x.shape()[2], dh = d / heads;
  const Tensor qkv = add(matmul(x, transpose(wqkv, 0, 1)), bqkv);  // [B, N, 3d]
  std::vector<Tensor> outs;
  for (std::int64_t h = 0; h < heads; ++h) {
    const Tensor q = narrow(qkv, 2, h * dh, dh), k = narrow(qkv, 2, d + h * dh, dh),
                 v = narrow(qkv, 2, 2 * d + h * dh, dh);  // [B, N, dh]
    const Tensor m_h = select(m, 1, h);                   // [B, 1 or N, dh]
    Tensor scores = div(matmul(mul(q, m_h), transpose(k, 1, 2)), std::sqrt(static_cast<double>(dh)));
    if (causal) scores = masked_fill(scores, causal_mask(n), -INFINITY);
    outs.push_back(matmul(softmax(scores, -1), v));
  }
  return add(matmul(concat(outs, 2), transpose(wproj, 0, 1)), bproj);
}

RefWeights weights_of(const nn::Module& layer, int d, int heads) {
  return {d, heads, layer.parameter("qkv.weight").to_vector<double>(), layer.parameter("qkv.bias").to_vector<double>(),
          layer.parameter("proj.weight").to_vector<double>(), layer.parameter("proj.bias").to_vector<double>()};
}

}  // namespace

TEST_CASE("attention: f64 gradient checks of the elliptical layer with m held constant") {
  constexpr int kD = 4, kHeads = 2, kN = 3, kBatch = 2, kDh = kD / kHeads;
  Generator gen(3);
  const Tensor v_prev = randn({kBatch, kHeads, kN, kDh}, gen, DType::f64);
  for (bool causal : {false, true}) {
    for (std::int64_t rows : {std::int64_t{1}, std::int64_t{kN}}) {  // the shapes of sequence and causal m
      CAPTURE(causal);
      CAPTURE(rows);
      Tensor m = uniform({kBatch, kHeads, rows, kDh}, 0.2, 1.0, gen, DType::f64);
      FixedMetricAttention layer(kD, kHeads, m);
      layer.to(DType::f64);
      const Tensor x = randn({kBatch, kN, kD}, gen, DType::f64).requires_grad_();
      std::vector<Tensor> inputs = layer.parameters();
      inputs.push_back(x);
      const auto result = gradcheck([&](const std::vector<Tensor>& xs) { return layer.forward(xs.back(), causal, v_prev).out; },
                                    inputs);
      INFO(result.worst);
      CHECK(result.max_error < 1e-6);

      // The same computation written with ops.
      std::vector<Tensor> raw;
      for (const auto& p : layer.parameters()) raw.push_back(p.detach().clone().requires_grad_());
      raw.push_back(x);
      const auto ops_result = gradcheck(
          [&](const std::vector<Tensor>& xs) { return ops_attention(xs[4], xs[0], xs[1], xs[2], xs[3], m, kHeads, causal); },
          raw);
      INFO(ops_result.worst);
      CHECK(ops_result.max_error < 1e-6);
    }
  }
}

TEST_CASE("attention: m is a stop-gradient; the layer's gradients are those of q * constant m") {
  constexpr int kD = 4, kHeads = 2, kN = 3, kBatch = 2, kDh = kD / kHeads;
  for (auto [mode, ref_mode] : {std::pair{nn::MetricMode::sequence, RefMetric::sequence},
                                std::pair{nn::MetricMode::causal, RefMetric::causal}}) {
    for (bool causal : {false, true}) {
      CAPTURE(nn::metric_mode_name(mode));
      CAPTURE(causal);
      Generator gen(17);
      nn::EllipticalAttention layer(kD, kHeads, mode, gen);
      layer.to(DType::f64);
      const Tensor x = randn({kBatch, kN, kD}, gen, DType::f64).requires_grad_();
      // v_prev is a leaf that requires grad: the layer may use it only through m, so it must get nothing.
      const Tensor v_prev = randn({kBatch, kHeads, kN, kDh}, gen, DType::f64).requires_grad_();
      const Tensor direction = randn({kBatch, kN, kD}, gen, DType::f64);
      const auto out = layer.forward(x, causal, v_prev);
      sum(mul(out.out, direction)).backward();
      CHECK((!v_prev.grad().defined() || max_abs_diff(v_prev.grad(), zeros_like(v_prev)) == 0.0));
      REQUIRE(x.grad().defined());
      REQUIRE(layer.parameter("qkv.weight").grad().defined());
      // The query rows of qkv.weight get a gradient (through q~ = q * m).
      CHECK(max_abs_diff(narrow(layer.parameter("qkv.weight").grad(), 0, 0, kD), zeros({kD, kD}, DType::f64)) > 1e-6);

      // m as the reference computes it, then the ops version with m a constant: identical gradients, so no
      // gradient reached v or v_prev through m, and dq = dq~ * m.
      const RefWeights w = weights_of(layer, kD, kHeads);
      const Vec x_values = x.to_vector<double>();
      const RefResult ref = reference_attention(x_values, kBatch, kN, w, causal, ref_mode, v_prev.to_vector<double>());
      const std::int64_t rows = mode == nn::MetricMode::causal ? kN : 1;
      const Tensor m = from_vector(ref.m, {kBatch, kHeads, rows, kDh});
      CHECK(max_abs_diff(layer.last_metric(), m) < 1e-12);
      CHECK(max_abs_diff(out.out.to_vector<double>(), ref.out) < 1e-12);

      std::vector<Tensor> raw;
      for (const auto& p : layer.parameters()) raw.push_back(p.detach().clone().requires_grad_());
      const Tensor x2 = x.detach().clone().requires_grad_();
      sum(mul(ops_attention(x2, raw[0], raw[1], raw[2], raw[3], m, kHeads, causal), direction)).backward();
      const auto params = layer.parameters();
      for (std::size_t i = 0; i < params.size(); ++i) {
        CAPTURE(i);
        CHECK(max_abs_diff(params[i].grad(), raw[i].grad()) < 1e-12);
      }
      CHECK(max_abs_diff(x.grad(), x2.grad()) < 1e-12);
    }
  }
}

// ---- 3. causality inside a GPT -------------------------------------------------------------------------

TEST_CASE("attention: causal metric keeps a GPT causal; the sequence metric does not") {
  const std::vector<std::int64_t> base{1, 4, 2, 8, 5, 7, 3, 0, 9, 6, 2, 1, 5, 3, 8, 4};  // B=2, N=8
  struct Case {
    std::string kind;
    nn::MetricMode mode;
    bool causal;  // expected: positions before t are untouched by token t
  };
  for (const Case& c : {Case{"standard", nn::MetricMode::causal, true},
                       Case{"elliptical", nn::MetricMode::causal, true},
                       Case{"elliptical", nn::MetricMode::sequence, false}}) {
    CAPTURE(c.kind);
    CAPTURE(nn::metric_mode_name(c.mode));
    GPT model(tiny_gpt(c.kind, c.mode), 5);
    randomize(model, 21);
    model.eval();
    const Tensor before = model.forward(token_ids(base, 2));
    for (std::int64_t t : {1, 4, 7}) {
      CAPTURE(t);
      std::vector<std::int64_t> changed = base;
      changed[static_cast<std::size_t>(t)] = (changed[static_cast<std::size_t>(t)] + 3) % 10;      // batch 0
      changed[static_cast<std::size_t>(8 + t)] = (changed[static_cast<std::size_t>(8 + t)] + 5) % 10;  // batch 1
      const Tensor after = model.forward(token_ids(changed, 2));
      CHECK(position_diff(before, after, t, 8) > 1e-3);  // the change is visible from t on
      if (c.causal) {
        CHECK(position_diff(before, after, 0, t) <= 1e-6);
      } else {
        // The future leaks into the past through m. Position 0 is the exception: it attends to one key,
        // so its softmax is 1 whatever m does to its scores.
        CHECK(position_diff(before, after, 0, 1) <= 1e-6);
        if (t >= 2) CHECK(position_diff(before, after, 1, t) > 1e-3);
      }
    }
  }
}

// ---- 4. the random ablation ----------------------------------------------------------------------------

TEST_CASE("attention: random metric is fresh on every call, seeded, max-normalised and ignores the values") {
  constexpr int kD = 8, kHeads = 2, kDh = kD / kHeads;
  Generator data(1);
  const Tensor x = randn({3, 5, kD}, data);
  const Tensor v_prev = randn({3, kHeads, 5, kDh}, data);
  Generator gen(42);
  nn::EllipticalAttention layer(kD, kHeads, nn::MetricMode::random, gen);
  layer.forward(x, true, v_prev);
  const Tensor m1 = layer.last_metric().clone();
  layer.forward(x, true, v_prev);
  const Tensor m2 = layer.last_metric().clone();
  CHECK(m1.shape() == Shape{3, kHeads, 1, kDh});
  CHECK(max_abs_diff(m1, m2) > 1e-3);
  for (const Tensor& m : {m1, m2}) {
    const Vec values = m.to_vector<double>();
    for (std::size_t row = 0; row < values.size() / kDh; ++row) {
      const auto first = values.begin() + static_cast<std::ptrdiff_t>(row * kDh);
      CHECK(*std::max_element(first, first + kDh) == 1.0);
      CHECK(*std::min_element(first, first + kDh) >= 0.0);
    }
  }
  // The same generator state gives the same m, whatever the values.
  gen.manual_seed(7);
  const Tensor out_a = layer.forward(x, true, v_prev).out;
  const Tensor m_a = layer.last_metric().clone();
  gen.manual_seed(7);
  const Tensor out_b = layer.forward(x, true, mul(v_prev, 3.0)).out;
  CHECK(max_abs_diff(m_a, layer.last_metric()) == 0.0);
  CHECK(max_abs_diff(out_a, out_b) == 0.0);
  // Two layers built from equally seeded generators draw the same weights and the same metrics.
  Generator g1(99), g2(99);
  nn::EllipticalAttention a(kD, kHeads, nn::MetricMode::random, g1), b(kD, kHeads, nn::MetricMode::random, g2);
  CHECK(max_abs_diff(a.forward(x, false, v_prev).out, b.forward(x, false, v_prev).out) == 0.0);
  CHECK(max_abs_diff(a.last_metric(), b.last_metric()) == 0.0);
}

// ---- 5. incremental decoding ---------------------------------------------------------------------------

TEST_CASE("attention: cached decoding equals the full forward for standard and causal elliptical") {
  const std::vector<std::int64_t> ids{3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4};  // B=2, N=10
  constexpr std::int64_t kN = 10;
  const std::vector<std::vector<std::int64_t>> schedules{{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {3, 2, 4, 1}, {10}, {1, 9}};
  for (auto [kind, mode] : {std::pair{"standard", nn::MetricMode::causal},
                            std::pair{"elliptical", nn::MetricMode::causal},
                            std::pair{"elliptical", nn::MetricMode::sequence}}) {
    CAPTURE(kind);
    CAPTURE(nn::metric_mode_name(mode));
    GPT model(tiny_gpt(kind, mode), 8);
    randomize(model, 31);
    model.eval();
    NoGradGuard no_grad;
    const Tensor input = token_ids(ids, 2);
    const Tensor full = model.forward(input);
    for (const auto& chunks : schedules) {
      CAPTURE(chunks.size());
      std::vector<nn::KVCache> caches;
      std::vector<Tensor> pieces;
      std::int64_t at = 0;
      for (std::int64_t size : chunks) {
        pieces.push_back(model.forward_cached(narrow(input, 1, at, size), caches));
        CHECK(pieces.back().shape() == Shape{2, size, 10});
        at += size;
        CHECK(caches.at(0).length() == at);
      }
      const Tensor cached = concat(pieces, 1);
      if (mode == nn::MetricMode::sequence) {
        // Not identical, by design: a sequence-mode layer computes the earlier positions with the metric of
        // the tokens seen so far, while the full forward uses the mean over all N tokens at every position
        // (the model is not causal; see docs/elliptical-attention.md). The schedules {10} and {1, 9} happen
        // to agree: one chunk is the full forward, and position 0 attends to a single key, so its output
        // does not depend on m. Every schedule that computes positions >= 1 before the last chunk differs.
        if (chunks.size() <= 2) CHECK(max_abs_diff(cached, full) <= 1e-5);
        else CHECK(position_diff(cached, full, 1, kN - 1) > 1e-4);
      } else {
        CHECK(max_abs_diff(cached, full) <= 1e-5);
      }
    }
    // The context is bounded by seq_len (12), cached tokens included.
    std::vector<nn::KVCache> caches;
    model.forward_cached(input, caches);
    CHECK_ERROR(model.forward_cached(narrow(input, 1, 0, 3), caches), "gpt", "10", "12");
  }
}

// ---- 6. the fused op ------------------------------------------------------------------------------------

namespace {

// softmax(scale * (q * m) k^T) v with the explicit ops, as the layer computes it on the CPU.
Tensor explicit_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& m, double scale,
                          bool causal) {
  return matmul(scaled_softmax(matmul(m.defined() ? mul(q, m) : q, transpose(k, -1, -2)), scale, causal), v);
}

// max |a - b| / max(1, max |b|)
double relative_diff(const Tensor& a, const Tensor& b) {
  const Vec values = b.to_vector<double>();
  double largest = 1;
  for (double x : values) largest = std::max(largest, std::abs(x));
  return max_abs_diff(a, b) / largest;
}

}  // namespace

TEST_CASE("scaled_dot_product_attention: equals scaled_softmax and matmul, forward and backward, on every device") {
  struct Case {
    std::int64_t batch, heads, nq, nk, dh;
    std::int64_t metric_rows;  // 0: standard attention; 1: one m per head; nq: one m per query row
    bool causal;
  };
  const std::vector<Case> cases = {
      {2, 2, 5, 5, 4, 0, false},   {2, 2, 5, 5, 4, 0, true},   {2, 3, 6, 6, 8, 1, false},
      {2, 3, 6, 6, 8, 6, true},    {1, 2, 3, 7, 4, 3, true},   {1, 2, 3, 7, 4, 0, false},  // fewer queries than keys
      {1, 2, 7, 7, 16, 1, true},   {2, 2, 70, 70, 24, 70, true},  // odd sizes; several tiles, a padded head dim
      {1, 1, 1, 33, 64, 1, true},  // one new token after 32 cached ones
      // The CPU's f32 kernel takes blocks of 48 query rows: several blocks, the last one partial, with and
      // without a mask, and a causal block whose keys run past its queries (cached keys).
      {1, 2, 150, 150, 32, 150, true}, {1, 2, 100, 100, 32, 1, false}, {1, 2, 50, 130, 32, 0, true},
  };
  for (const auto& d : testing::available_devices()) {
    for (DType dtype : {DType::f32, DType::f64}) {
      if (dtype == DType::f64 && !d.has_f64) continue;
      const double tolerance = dtype == DType::f32 ? 2e-5 : 1e-12;
      for (const Case& c : cases) {
        CAPTURE(d.device.str());
        CAPTURE(dtype_name(dtype));
        CAPTURE(c.nq);
        CAPTURE(c.nk);
        CAPTURE(c.dh);
        CAPTURE(c.metric_rows);
        CAPTURE(c.causal);
        Generator gen(11);
        // Strided views, as in the layer: q, k and v are views of qkv projections ([B, N, heads, dh] memory,
        // here k and v of one), and the output's gradient arrives as a view of [B, Nq, heads, dh] memory.
        const Tensor q_base = randn({c.batch, c.nq, c.heads, c.dh}, gen, dtype).to(d.device).requires_grad_();
        const Tensor kv_base = randn({c.batch, c.nk, 2, c.heads, c.dh}, gen, dtype).to(d.device).requires_grad_();
        const Shape metric_shape{c.batch, c.heads, c.metric_rows, c.dh};
        const Tensor m = c.metric_rows ? uniform(metric_shape, 0.2, 1.0, gen, dtype).to(d.device) : Tensor{};
        const Tensor direction = randn({c.batch, c.nq, c.heads, c.dh}, gen, dtype).to(d.device);
        const double scale = 1.0 / std::sqrt(static_cast<double>(c.dh));
        using AttentionFn = Tensor (*)(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, bool);
        // The output and the gradients of sum(out * direction) with respect to q, k and v.
        auto run = [&](AttentionFn attention) {
          for (Tensor t : {q_base, kv_base}) t.zero_grad();
          const Tensor k = permute(select(kv_base, 2, 0), {0, 2, 1, 3}), v = permute(select(kv_base, 2, 1), {0, 2, 1, 3});
          const Tensor out = attention(permute(q_base, {0, 2, 1, 3}), k, v, m, scale, c.causal);
          sum(mul(permute(out, {0, 2, 1, 3}), direction)).backward();
          return std::vector<Tensor>{out.detach(), q_base.grad(), kv_base.grad()};
        };
        const auto fused = run(scaled_dot_product_attention), expected = run(explicit_attention);
        for (std::size_t i = 0; i < fused.size(); ++i) {
          CAPTURE(i);  // out, gq, and gk and gv together
          REQUIRE(fused[i].defined());
          CHECK(fused[i].device() == d.device);
          CHECK(relative_diff(fused[i], expected[i]) < tolerance);
        }
      }
    }
  }
}

TEST_CASE("scaled_dot_product_attention_qkv: the separate op's results on the layer's qkv view; bad shapes named") {
  Generator gen(12);
  for (const bool causal : {false, true}) {
    for (const bool with_metric : {false, true}) {
      CAPTURE(causal);
      CAPTURE(with_metric);
      // As the attention layer makes it: [B, N, 3 * H * dh] viewed as [B, N, 3, H, dh], then [3, B, H, N, dh].
      Tensor projected = randn({2, 9, 3 * 2 * 8}, gen).requires_grad_();
      const Tensor metric = with_metric ? uniform({2, 2, 1, 8}, 0.2, 1.0, gen) : Tensor{};
      const Tensor direction = randn({2, 2, 9, 8}, gen);
      auto run = [&](bool packed) {
        projected.zero_grad();
        const Tensor heads = permute(view(projected, {2, 9, 3, 2, 8}), {2, 0, 3, 1, 4});
        const Tensor out = packed ? scaled_dot_product_attention_qkv(heads, metric, 0.35, causal)
                                  : scaled_dot_product_attention(select(heads, 0, 0), select(heads, 0, 1),
                                                                 select(heads, 0, 2), metric, 0.35, causal);
        sum(mul(out, direction)).backward();
        return std::pair{out.detach(), projected.grad()};
      };
      const auto [packed_out, packed_grad] = run(true);
      const auto [separate_out, separate_grad] = run(false);
      CHECK(relative_diff(packed_out, separate_out) < 1e-6);
      CHECK(relative_diff(packed_grad, separate_grad) < 1e-6);
    }
  }
  const Tensor wrong = randn({2, 2, 2, 5, 4}, gen);
  CHECK_THROWS_WITH(scaled_dot_product_attention_qkv(wrong, {}, 0.5, false),
                    doctest::Contains("scaled_dot_product_attention_qkv: expected qkv [3, B, H, N, dh] (q, k and v "
                                      "stacked on the first axis), got [2, 2, 2, 5, 4]"));
}

TEST_CASE("fused_attention_preferred: the CPU takes the fused op for f32 attention with its own GEMM only") {
  const bool blocked = ellipse::cpu::sgemm_available();
  CHECK(fused_attention_preferred(Device::cpu(), DType::f32, 32, true) == blocked);
  CHECK(fused_attention_preferred(Device::cpu(), DType::f32, 32, false) == blocked);  // the ViT's unmasked attention
  CHECK_FALSE(fused_attention_preferred(Device::cpu(), DType::f64, 32, true));  // exact loops: slower than products
  // A layer on the CPU gives the explicit path's result either way, with and without a mask.
  Generator gen(3);
  for (const bool causal : {true, false}) {
    CAPTURE(causal);
    nn::Attention layer(16, 2, gen);
    const Tensor x = randn({2, 9, 16}, gen);
    const Tensor fused = layer.forward(x, causal).out;
    layer.keep_attention(true);  // forces the explicit path
    const Tensor explicit_out = layer.forward(x, causal).out;
    CHECK(relative_diff(fused, explicit_out) < 1e-5);
  }
}

TEST_CASE("scaled_dot_product_attention: m is a constant; bad shapes, dtypes and sizes are named") {
  Generator gen(4);
  const Tensor q = randn({1, 2, 3, 4}, gen).requires_grad_(), k = randn({1, 2, 5, 4}, gen);
  const Tensor m = full({1, 2, 1, 4}, 0.5).requires_grad_();
  sum(scaled_dot_product_attention(q, k, k, m, 0.5, true)).backward();
  CHECK(q.grad().defined());
  CHECK_FALSE(m.grad().defined());

  constexpr const char* op = "scaled_dot_product_attention";
  CHECK_ERROR(scaled_dot_product_attention(ones({2, 3, 4}), k, k, {}, 1.0, false), op, "[2, 3, 4]", "[B, H, Nq, dh]");
  CHECK_ERROR(scaled_dot_product_attention(q, k, ones({1, 2, 6, 4}), {}, 1.0, false), op, "[1, 2, 6, 4]");
  CHECK_ERROR(scaled_dot_product_attention(q, ones({1, 2, 5, 3}), ones({1, 2, 5, 3}), {}, 1.0, false), op,
              "[1, 2, 5, 3]");
  CHECK_ERROR(scaled_dot_product_attention(ones({1, 2, 6, 4}), k, k, {}, 1.0, true), op, "causal", "[1, 2, 6, 4]",
              "[1, 2, 5, 4]");
  CHECK_ERROR(scaled_dot_product_attention(q, ones({1, 2, 0, 4}), ones({1, 2, 0, 4}), {}, 1.0, false), op,
              "at least one key", "[1, 2, 0, 4]");
  CHECK_ERROR(scaled_dot_product_attention(q, k, k, ones({1, 2, 2, 4}), 1.0, false), op, "[1, 2, 2, 4]");
  CHECK_ERROR(scaled_dot_product_attention(q, k, k, ones({2, 2, 1, 4}), 1.0, false), op, "metric", "[2, 2, 1, 4]");
  CHECK_ERROR(scaled_dot_product_attention(q, k.to(DType::f64), k, {}, 1.0, false), op, "dtypes");
  CHECK_ERROR(scaled_dot_product_attention(q, k, k, ones({1, 2, 1, 4}, DType::f64), 1.0, false), op, "dtypes");
  CHECK_ERROR(scaled_dot_product_attention(ones({1, 1, 1, 1}, DType::i64), ones({1, 1, 1, 1}, DType::i64),
                                           ones({1, 1, 1, 1}, DType::i64), {}, 1.0, false),
              op, "i64");
  // The kernels: any floating dtype and head dim on the CPU; f32 and head dims up to 128 on CUDA.
  CHECK(fused_attention_supported(Device::cpu(), DType::f64, 512));
  CHECK_FALSE(fused_attention_supported(Device::cpu(), DType::i64, 64));
  for (const auto& d : testing::available_devices()) {
    if (d.device.is_cpu()) continue;
    CHECK(fused_attention_supported(d.device, DType::f32, 128));
    CHECK_FALSE(fused_attention_supported(d.device, DType::f32, 129));
    CHECK_FALSE(fused_attention_supported(d.device, DType::f64, 64));
  }
}

namespace {

std::unique_ptr<nn::Attention> make_layer(const std::string& kind, nn::MetricMode mode, std::int64_t dim,
                                          std::int64_t heads, Generator& gen) {
  if (kind == "standard") return std::make_unique<nn::Attention>(dim, heads, gen);
  return std::make_unique<nn::EllipticalAttention>(dim, heads, mode, gen);
}

const std::vector<std::pair<std::string, nn::MetricMode>> kLayerKinds = {
    {"standard", nn::MetricMode::causal},
    {"elliptical", nn::MetricMode::sequence},
    {"elliptical", nn::MetricMode::causal},
};

}  // namespace

TEST_CASE("attention: a layer's outputs and gradients are the same on its fused and its explicit path") {
  // Keeping the probabilities forces the explicit path; without them a CUDA layer takes the fused op. (On the
  // CPU both runs are explicit: the op itself is checked against the explicit path above.)
  constexpr std::int64_t kD = 32, kHeads = 2, kN = 9, kBatch = 2;
  for (const auto& d : testing::available_devices()) {
    for (auto [kind, mode] : kLayerKinds) {
      for (bool causal : {false, true}) {
        CAPTURE(d.device.str());
        CAPTURE(kind);
        CAPTURE(nn::metric_mode_name(mode));
        CAPTURE(causal);
        Generator gen(23);
        const auto layer = make_layer(kind, mode, kD, kHeads, gen);
        layer->to(d.device);
        Tensor x = randn({kBatch, kN, kD}, gen).to(d.device).requires_grad_();
        const Tensor v_prev = randn({kBatch, kHeads, kN, kD / kHeads}, gen).to(d.device);
        const Tensor direction = randn({kBatch, kN, kD}, gen).to(d.device);
        // The output and the gradients of sum(out * direction) with respect to x and every parameter.
        auto run = [&](bool keep_probabilities) {
          layer->keep_attention(keep_probabilities);
          layer->zero_grad();
          x.zero_grad();
          const Tensor out = layer->forward(x, causal, v_prev).out;
          sum(mul(out, direction)).backward();
          std::vector<Tensor> results{out.detach(), x.grad()};
          for (const Tensor& p : layer->parameters()) results.push_back(p.grad());
          return results;
        };
        const auto fused = run(false), explicit_path = run(true);
        for (std::size_t i = 0; i < fused.size(); ++i) {
          CAPTURE(i);  // out, gx, then the parameters' gradients
          REQUIRE(fused[i].defined());
          CHECK(relative_diff(fused[i], explicit_path[i]) < 2e-5);
        }
      }
    }
  }
}

TEST_CASE("attention: a layer decoding with a cache equals its full forward, on every device") {
  constexpr std::int64_t kD = 32, kHeads = 2, kN = 9, kBatch = 2;
  for (const auto& d : testing::available_devices()) {
    for (auto [kind, mode] : kLayerKinds) {
      if (mode == nn::MetricMode::sequence) continue;  // not causal, so not equal by design (see section 5)
      CAPTURE(d.device.str());
      CAPTURE(kind);
      Generator gen(29);
      const auto layer = make_layer(kind, mode, kD, kHeads, gen);
      layer->to(d.device);
      const Tensor x = randn({kBatch, kN, kD}, gen).to(d.device);
      const Tensor v_prev = randn({kBatch, kHeads, kN, kD / kHeads}, gen).to(d.device);
      NoGradGuard no_grad;
      const Tensor full = layer->forward(x, true, v_prev).out;
      nn::KVCache cache;
      std::vector<Tensor> pieces;
      std::int64_t at = 0;
      for (std::int64_t size : {3, 1, 5}) {  // the new queries see the cached keys and their own prefix
        pieces.push_back(layer->forward(narrow(x, 1, at, size), true, narrow(v_prev, 2, at, size), &cache).out);
        at += size;
      }
      CHECK(cache.length() == kN);
      CHECK(relative_diff(concat(pieces, 1), full) < 1e-5);
    }
  }
}
