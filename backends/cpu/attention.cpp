// Fused attention on the CPU: exact row-by-row loops in f32 and f64, parallel over (batch, head). They are the
// reference for the CUDA kernels and what the gradient checks differentiate; the layers keep their explicit,
// tuned path on the CPU (nn/attention.cpp).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/parallel.hpp"

namespace ellipse {

using cpu::parallel_for;

namespace {

// One call's sizes: `slices` (b, h) pairs of nq query rows and nk key rows of dh features each.
struct AttentionGeometry {
  std::int64_t slices, nq, nk, dh;
  std::int64_t metric_rows;  // 0 without a metric, else 1 or nq
  bool causal;

  AttentionGeometry(const Tensor& q, const Tensor& k, const Tensor& metric, bool causal_mask)
      : slices(q.shape()[0] * q.shape()[1]), nq(q.shape()[2]), nk(k.shape()[2]), dh(q.shape()[3]),
        metric_rows(metric.defined() ? metric.shape()[2] : 0), causal(causal_mask) {}

  // How many keys (a prefix) query row i sees.
  std::int64_t visible(std::int64_t i) const { return causal ? i + nk - nq + 1 : nk; }

  // The metric row of query i in slice bh, or nullptr for m = 1.
  template <class T>
  const T* metric_row(const Tensor& metric, std::int64_t bh, std::int64_t i) const {
    if (metric_rows == 0) return nullptr;
    return metric.data<T>() + (bh * metric_rows + (metric_rows == 1 ? 0 : i)) * dh;
  }
};

template <class T>
T dot(const T* a, const T* b, std::int64_t n) {
  T total = 0;
  for (std::int64_t d = 0; d < n; ++d) total += a[d] * b[d];
  return total;
}

// y += a * x
template <class T>
void axpy(T a, const T* x, T* y, std::int64_t n) {
  for (std::int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// The query row as the scores see it: scale * q * m.
template <class T>
void scaled_query(const T* q, const T* m, T scale, std::int64_t dh, T* out) {
  for (std::int64_t d = 0; d < dh; ++d) out[d] = scale * q[d] * (m ? m[d] : T(1));
}

template <class T>
void attention_typed(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric, double scale_in,
                     bool causal, const Tensor& out, const Tensor& lse) {
  const AttentionGeometry g(q, k, metric, causal);
  const T scale = static_cast<T>(scale_in);
  parallel_for(g.slices, g.nq * g.nk * g.dh, [&](std::int64_t begin, std::int64_t end) {
    std::vector<T> query(static_cast<std::size_t>(g.dh)), weights(static_cast<std::size_t>(g.nk));
    for (std::int64_t bh = begin; bh < end; ++bh) {
      const T* keys = k.data<T>() + bh * g.nk * g.dh;
      const T* values = v.data<T>() + bh * g.nk * g.dh;
      for (std::int64_t i = 0; i < g.nq; ++i) {
        const std::int64_t row = bh * g.nq + i;
        scaled_query(q.data<T>() + row * g.dh, g.metric_row<T>(metric, bh, i), scale, g.dh, query.data());
        const std::int64_t visible = g.visible(i);
        T max = -std::numeric_limits<T>::infinity();
        for (std::int64_t j = 0; j < visible; ++j) {
          weights[j] = dot(query.data(), keys + j * g.dh, g.dh);
          max = std::max(max, weights[j]);
        }
        T total = 0;
        for (std::int64_t j = 0; j < visible; ++j) {
          weights[j] = std::exp(weights[j] - max);
          total += weights[j];
        }
        T* o = out.data<T>() + row * g.dh;
        std::fill(o, o + g.dh, T(0));
        for (std::int64_t j = 0; j < visible; ++j) axpy(weights[j] / total, values + j * g.dh, o, g.dh);
        lse.data<T>()[row] = max + std::log(total);
      }
    }
  });
}

template <class T>
void attention_backward_typed(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric,
                              const Tensor& out, const Tensor& lse, const Tensor& gout, double scale_in, bool causal,
                              const Tensor& gq, const Tensor& gk, const Tensor& gv) {
  const AttentionGeometry g(q, k, metric, causal);
  const T scale = static_cast<T>(scale_in);
  // A slice's gk and gv rows receive from every query of that slice only, so slices are independent tasks.
  parallel_for(g.slices, 3 * g.nq * g.nk * g.dh, [&](std::int64_t begin, std::int64_t end) {
    std::vector<T> query(static_cast<std::size_t>(g.dh)), grad_query(static_cast<std::size_t>(g.dh));
    for (std::int64_t bh = begin; bh < end; ++bh) {
      const T* keys = k.data<T>() + bh * g.nk * g.dh;
      const T* values = v.data<T>() + bh * g.nk * g.dh;
      T* grad_keys = gk.data<T>() + bh * g.nk * g.dh;
      T* grad_values = gv.data<T>() + bh * g.nk * g.dh;
      std::fill(grad_keys, grad_keys + g.nk * g.dh, T(0));
      std::fill(grad_values, grad_values + g.nk * g.dh, T(0));
      for (std::int64_t i = 0; i < g.nq; ++i) {
        const std::int64_t row = bh * g.nq + i;
        const T* m = g.metric_row<T>(metric, bh, i);
        scaled_query(q.data<T>() + row * g.dh, m, scale, g.dh, query.data());
        const T* grad_out = gout.data<T>() + row * g.dh;
        const T delta = dot(grad_out, out.data<T>() + row * g.dh, g.dh);  // sum_j P_ij dP_ij
        const T row_lse = lse.data<T>()[row];
        std::fill(grad_query.begin(), grad_query.end(), T(0));
        for (std::int64_t j = 0; j < g.visible(i); ++j) {
          const T p = std::exp(dot(query.data(), keys + j * g.dh, g.dh) - row_lse);
          const T grad_score = p * (dot(grad_out, values + j * g.dh, g.dh) - delta);
          axpy(p, grad_out, grad_values + j * g.dh, g.dh);
          axpy(grad_score, query.data(), grad_keys + j * g.dh, g.dh);
          axpy(grad_score, keys + j * g.dh, grad_query.data(), g.dh);
        }
        T* grad_q = gq.data<T>() + row * g.dh;
        for (std::int64_t d = 0; d < g.dh; ++d) grad_q[d] = scale * (m ? m[d] : T(1)) * grad_query[d];
      }
    }
  });
}

}  // namespace

void CpuBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric, double scale,
                           bool causal, const Tensor& out, const Tensor& lse) {
  dispatch_floating(q.dtype(), "attention", [&](auto tag) {
    attention_typed<decltype(tag)>(q, k, v, metric, scale, causal, out, lse);
  });
}

void CpuBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric,
                                    const Tensor& out, const Tensor& lse, const Tensor& gout, double scale, bool causal,
                                    const Tensor& gq, const Tensor& gk, const Tensor& gv) {
  dispatch_floating(q.dtype(), "attention_backward", [&](auto tag) {
    attention_backward_typed<decltype(tag)>(q, k, v, metric, out, lse, gout, scale, causal, gq, gk, gv);
  });
}

}  // namespace ellipse
