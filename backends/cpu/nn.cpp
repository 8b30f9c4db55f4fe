// CPU kernels: softmax, elliptical attention's metric, layer norm, embedding, cross-entropy (forward and
// backward).
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/fast_math.hpp"
#include "backends/cpu/parallel.hpp"

namespace ellipse {

using cpu::lane_max;
using cpu::lane_sum;
using cpu::parallel_for;

namespace {

// One row of scaled_softmax: only the `visible` prefix is read and exponentiated, the rest is written as
// 0. (A function of its own with unaliased pointers: inlined into the kernel's loop, GCC 12 left the
// exponentials scalar.)
template <class T>
void scaled_softmax_row(const T* __restrict in, T* __restrict out, std::int64_t visible, std::int64_t n, T s) {
  T max = lane_max<T>(visible, [in, s](std::int64_t j) { return s * in[j]; });
  if (max == -std::numeric_limits<T>::infinity()) max = T(0);  // as softmax: an all -inf row is NaN
  for (std::int64_t j = 0; j < visible; ++j) out[j] = cpu::exp_fast(s * in[j] - max);
  const T inv = T(1) / lane_sum<T>(visible, [out](std::int64_t j) { return out[j]; });
  for (std::int64_t j = 0; j < visible; ++j) out[j] *= inv;
  for (std::int64_t j = visible; j < n; ++j) out[j] = T(0);
}

}  // namespace

void CpuBackend::softmax(const Tensor& x, const Tensor& y, std::int64_t outer, std::int64_t n, std::int64_t inner,
                         bool log) {
  dispatch_floating(x.dtype(), "softmax", [&](auto tag) {
    using T = decltype(tag);
    const T* src = x.data<T>();
    T* dst = y.data<T>();
    // One task per (outer, inner) lane; the lane's n elements are `inner` apart.
    parallel_for(outer * inner, n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t lane = begin; lane < end; ++lane) {
        const std::int64_t base = (lane / inner) * n * inner + lane % inner;
        const T* in = src + base;
        T* out = dst + base;
        T max = -std::numeric_limits<T>::infinity();
        for (std::int64_t j = 0; j < n; ++j) max = std::max(max, in[j * inner]);
        if (max == -std::numeric_limits<T>::infinity()) max = T(0);  // avoids -inf - -inf; the row is 0/0 = NaN, as in PyTorch
        T total = 0;
        for (std::int64_t j = 0; j < n; ++j) {
          const T e = cpu::exp_fast(in[j * inner] - max);
          if (!log) out[j * inner] = e;
          total += e;
        }
        if (log) {
          const T log_total = std::log(total) + max;
          for (std::int64_t j = 0; j < n; ++j) out[j * inner] = in[j * inner] - log_total;
        } else {
          const T scale = T(1) / total;
          for (std::int64_t j = 0; j < n; ++j) out[j * inner] *= scale;
        }
      }
    });
  });
}

void CpuBackend::softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, std::int64_t outer,
                                  std::int64_t n, std::int64_t inner, bool log) {
  dispatch_floating(y.dtype(), "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    parallel_for(outer * inner, n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t lane = begin; lane < end; ++lane) {
        const std::int64_t base = (lane / inner) * n * inner + lane % inner;
        const T* yv = y.data<T>() + base;
        const T* g = gy.data<T>() + base;
        T* out = gx.data<T>() + base;
        // softmax: gx = y * (g - sum(g * y)); log_softmax: gx = g - exp(y) * sum(g).
        T dot = 0;
        for (std::int64_t j = 0; j < n; ++j) dot += log ? g[j * inner] : g[j * inner] * yv[j * inner];
        for (std::int64_t j = 0; j < n; ++j) {
          const std::int64_t i = j * inner;
          out[i] = log ? g[i] - cpu::exp_fast(yv[i]) * dot : yv[i] * (g[i] - dot);
        }
      }
    });
  });
}

void CpuBackend::scaled_softmax(const Tensor& x, const Tensor& y, std::int64_t rows, std::int64_t nq, std::int64_t n,
                                double scale, bool causal) {
  dispatch_floating(x.dtype(), "scaled_softmax", [&](auto tag) {
    using T = decltype(tag);
    const T s = static_cast<T>(scale);
    parallel_for(rows, n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t r = begin; r < end; ++r) {
        scaled_softmax_row(x.data<T>() + r * n, y.data<T>() + r * n, causal ? r % nq + n - nq + 1 : n, n, s);
      }
    });
  });
}

void CpuBackend::scaled_softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, std::int64_t rows,
                                         std::int64_t n, double scale) {
  dispatch_floating(y.dtype(), "scaled_softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    const T s = static_cast<T>(scale);
    parallel_for(rows, 2 * n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t r = begin; r < end; ++r) {
        const T* yv = y.data<T>() + r * n;
        const T* g = gy.data<T>() + r * n;
        T* out = gx.data<T>() + r * n;
        const T dot = lane_sum<T>(n, [g, yv](std::int64_t j) { return g[j] * yv[j]; });
        for (std::int64_t j = 0; j < n; ++j) out[j] = s * yv[j] * (g[j] - dot);
      }
    });
  });
}

namespace {

// out = s / max(max_d s, 1e-12) with s = total / count: one row of m. (Divisions, not reciprocals: the
// largest entry must come out as exactly 1.)
template <class T>
void write_metric_row(const T* __restrict total, T count, std::int64_t dh, T* __restrict out) {
  for (std::int64_t d = 0; d < dh; ++d) out[d] = total[d] / count;
  const T largest = std::max(lane_max<T>(dh, [out](std::int64_t d) { return out[d]; }), T(1e-12));
  for (std::int64_t d = 0; d < dh; ++d) out[d] /= largest;
}

// total[d] += |cur[d] - prev[d]| over one token's value row.
template <class T>
void add_abs_diff(const T* __restrict cur, const T* __restrict prev, std::int64_t dh, T* __restrict total) {
  for (std::int64_t d = 0; d < dh; ++d) total[d] += std::abs(cur[d] - prev[d]);
}

}  // namespace

void CpuBackend::elliptical_metric(const Tensor& v, const Tensor& v_prev, const Tensor& past_sum, std::int64_t past,
                                   bool causal, const Tensor& metric, const Tensor& sum) {
  dispatch_floating(v.dtype(), "elliptical_metric", [&](auto tag) {
    using T = decltype(tag);
    const Shape& shape = v.shape();
    const std::int64_t heads = shape[1], n = shape[2], dh = shape[3];
    const Strides &vs = v.strides(), &ps = v_prev.strides();
    // One task per batch element, walking its tokens in order and the heads of each token together: the heads
    // of one token's value row lie side by side, so v and v_prev are read front to back.
    parallel_for(shape[0], 3 * heads * n * dh, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t b = begin; b < end; ++b) {
        T* totals = sum.data<T>() + b * heads * dh;  // [heads, dh]
        if (past_sum.defined()) std::copy_n(past_sum.data<T>() + b * heads * dh, heads * dh, totals);
        else std::fill_n(totals, heads * dh, T(0));
        T* m = metric.data<T>() + b * heads * (causal ? n : 1) * dh;
        const T* cur = v.data<T>() + b * vs[0];
        const T* prev = v_prev.data<T>() + b * ps[0];
        for (std::int64_t i = 0; i < n; ++i) {
          for (std::int64_t h = 0; h < heads; ++h) {
            T* total = totals + h * dh;
            add_abs_diff(cur + i * vs[2] + h * vs[1], prev + i * ps[2] + h * ps[1], dh, total);
            if (causal) write_metric_row(total, static_cast<T>(past + i + 1), dh, m + (h * n + i) * dh);
          }
        }
        if (!causal)
          for (std::int64_t h = 0; h < heads; ++h)
            write_metric_row(totals + h * dh, static_cast<T>(past + n), dh, m + h * dh);
      }
    });
  });
}

void CpuBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& y,
                            const Tensor& mean, const Tensor& rstd) {
  dispatch_floating(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    const std::int64_t n = x.shape().back(), rows = x.numel() / std::max<std::int64_t>(n, 1);
    const T* w = weight.data<T>();
    const T* b = bias.data<T>();
    parallel_for(rows, n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t r = begin; r < end; ++r) {
        const T* in = x.data<T>() + r * n;
        T* out = y.data<T>() + r * n;
        const T mu = lane_sum<T>(n, [in](std::int64_t j) { return in[j]; }) / T(n);
        // Two passes: the one-pass formula cancels badly when |mean| >> std.
        const T squares = lane_sum<T>(n, [in, mu](std::int64_t j) { return (in[j] - mu) * (in[j] - mu); });
        const T inv = T(1) / std::sqrt(squares / T(n) + T(eps));
        for (std::int64_t j = 0; j < n; ++j) out[j] = (in[j] - mu) * inv * w[j] + b[j];
        mean.data<T>()[r] = mu;
        rstd.data<T>()[r] = inv;
      }
    });
  });
}

void CpuBackend::layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                     const Tensor& gy, const Tensor& gx, const Tensor& gweight,
                                     const Tensor& gbias) {
  dispatch_floating(x.dtype(), "layer_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    const std::int64_t n = x.shape().back(), rows = x.numel() / std::max<std::int64_t>(n, 1);
    const T* w = weight.data<T>();
    // Each thread sums its rows' weight and bias gradients privately; the partials are added at the end.
    const int threads = cpu::max_threads();
    std::vector<T> partial(static_cast<std::size_t>(threads) * 2 * n, T(0));
    cpu::chunked_parallel_for(rows, 4 * n, [&](int chunk, std::int64_t begin, std::int64_t end) {
      T* gw = partial.data() + static_cast<std::size_t>(chunk) * 2 * n;
      T* gb = gw + n;
      for (std::int64_t r = begin; r < end; ++r) {
        const T* in = x.data<T>() + r * n;
        const T* g = gy.data<T>() + r * n;
        T* out = gx.data<T>() + r * n;
        const T mu = mean.data<T>()[r], inv = rstd.data<T>()[r];
        auto xhat = [in, mu, inv](std::int64_t j) { return (in[j] - mu) * inv; };
        for (std::int64_t j = 0; j < n; ++j) {
          gw[j] += g[j] * xhat(j);
          gb[j] += g[j];
        }
        // The means over the row of (g * w) and (g * w * xhat).
        const T mean_g = lane_sum<T>(n, [g, w](std::int64_t j) { return g[j] * w[j]; }) / T(n);
        const T mean_gx = lane_sum<T>(n, [g, w, &xhat](std::int64_t j) { return g[j] * w[j] * xhat(j); }) / T(n);
        for (std::int64_t j = 0; j < n; ++j) out[j] = inv * (g[j] * w[j] - mean_g - xhat(j) * mean_gx);
      }
    });
    T* gw_out = gweight.data<T>();
    T* gb_out = gbias.data<T>();
    for (int t = 0; t < threads; ++t) {
      const T* gw = partial.data() + static_cast<std::size_t>(t) * 2 * n;
      for (std::int64_t j = 0; j < n; ++j) {
        gw_out[j] += gw[j];
        gb_out[j] += gw[n + j];
      }
    }
  });
}

void CpuBackend::embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  dispatch_floating(weight.dtype(), "embedding", [&](auto tag) {
    using T = decltype(tag);
    const std::int64_t n = weight.shape()[1], rows = ids.numel();
    const std::int64_t* id = ids.data<std::int64_t>();
    parallel_for(rows, n, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t r = begin; r < end; ++r) std::copy_n(weight.data<T>() + id[r] * n, n, out.data<T>() + r * n);
    });
  });
}

void CpuBackend::embedding_backward(const Tensor& ids, const Tensor& gy, const Tensor& gweight) {
  dispatch_floating(gweight.dtype(), "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    const std::int64_t n = gweight.shape()[1], rows = ids.numel();
    const std::int64_t* id = ids.data<std::int64_t>();
    // Threads own disjoint column ranges, so repeated ids never race.
    parallel_for(n, rows, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t r = 0; r < rows; ++r) {
        const T* g = gy.data<T>() + r * n;
        T* dst = gweight.data<T>() + id[r] * n;
        for (std::int64_t j = begin; j < end; ++j) dst[j] += g[j];
      }
    });
  });
}

void CpuBackend::cross_entropy(const Tensor& logits, const Tensor& targets, std::int64_t ignore_index,
                               const Tensor& losses, const Tensor& lse) {
  dispatch_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    const std::int64_t classes = logits.shape()[1], rows = logits.shape()[0];
    const std::int64_t* target = targets.data<std::int64_t>();
    parallel_for(rows, classes, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t r = begin; r < end; ++r) {
        const T* row = logits.data<T>() + r * classes;
        T max = -std::numeric_limits<T>::infinity();
        for (std::int64_t c = 0; c < classes; ++c) max = std::max(max, row[c]);
        T total = 0;
        for (std::int64_t c = 0; c < classes; ++c) total += cpu::exp_fast(row[c] - max);
        const T log_sum_exp = max + std::log(total);
        lse.data<T>()[r] = log_sum_exp;
        losses.data<T>()[r] = target[r] == ignore_index ? T(0) : log_sum_exp - row[target[r]];
      }
    });
  });
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                        std::int64_t ignore_index, double scale, const Tensor& glogits) {
  dispatch_floating(logits.dtype(), "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    const std::int64_t classes = logits.shape()[1], rows = logits.shape()[0];
    const std::int64_t* target = targets.data<std::int64_t>();
    const T s = static_cast<T>(scale);
    parallel_for(rows, classes, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t r = begin; r < end; ++r) {
        const T* row = logits.data<T>() + r * classes;
        T* out = glogits.data<T>() + r * classes;
        if (target[r] == ignore_index) {
          std::fill_n(out, classes, T(0));
          continue;
        }
        const T log_sum_exp = lse.data<T>()[r];
        for (std::int64_t c = 0; c < classes; ++c) out[c] = s * cpu::exp_fast(row[c] - log_sum_exp);
        out[target[r]] -= s;
      }
    });
  });
}

}  // namespace ellipse
