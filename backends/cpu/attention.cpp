// Fused attention on the CPU, parallel over (batch, head). f32 on processors with the own GEMM runs blocks of
// queries through it (attention_gemm below); f64, and f32 elsewhere, run exact row-by-row loops, which are
// also the reference that the gradient checks differentiate and the GEMM path is tested against.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/fast_math.hpp"
#include "backends/cpu/parallel.hpp"
#include "backends/cpu/sgemm.hpp"

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

// A [B, H, N, dh] operand as the kernels walk it: rows of dh contiguous values, each (b, h) slice and each row
// at its own stride. The layers pass q, k and v as views of one qkv output and out as a view of the
// [B, N, H, dh] memory that the output projection reads, so neither side is copied.
template <class T>
struct HeadRows {
  T* data;
  std::int64_t heads, batch_stride, head_stride, row_stride;

  explicit HeadRows(const Tensor& t)
      : data(t.data<std::remove_const_t<T>>()), heads(t.shape()[1]), batch_stride(t.strides()[0]),
        head_stride(t.strides()[1]), row_stride(t.strides()[2]) {}
  T* row(std::int64_t bh, std::int64_t i) const {
    return data + bh / heads * batch_stride + bh % heads * head_stride + i * row_stride;
  }
  void fill_zero(std::int64_t bh, std::int64_t rows, std::int64_t dh) const {
    for (std::int64_t i = 0; i < rows; ++i) std::fill_n(row(bh, i), dh, T(0));
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
  const HeadRows<T> queries(q), keys(k), values(v), outputs(out);
  parallel_for(g.slices, g.nq * g.nk * g.dh, [&](std::int64_t begin, std::int64_t end) {
    std::vector<T> query(static_cast<std::size_t>(g.dh)), weights(static_cast<std::size_t>(g.nk));
    for (std::int64_t bh = begin; bh < end; ++bh) {
      for (std::int64_t i = 0; i < g.nq; ++i) {
        scaled_query(queries.row(bh, i), g.metric_row<T>(metric, bh, i), scale, g.dh, query.data());
        const std::int64_t visible = g.visible(i);
        T max = -std::numeric_limits<T>::infinity();
        for (std::int64_t j = 0; j < visible; ++j) {
          weights[j] = dot(query.data(), keys.row(bh, j), g.dh);
          max = std::max(max, weights[j]);
        }
        T total = 0;
        for (std::int64_t j = 0; j < visible; ++j) {
          weights[j] = std::exp(weights[j] - max);
          total += weights[j];
        }
        T* o = outputs.row(bh, i);
        std::fill(o, o + g.dh, T(0));
        for (std::int64_t j = 0; j < visible; ++j) axpy(weights[j] / total, values.row(bh, j), o, g.dh);
        lse.data<T>()[bh * g.nq + i] = max + std::log(total);
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
  const HeadRows<T> queries(q), keys(k), values(v), outputs(out), grad_outputs(gout);
  const HeadRows<T> grad_queries(gq), grad_keys(gk), grad_values(gv);
  // A slice's gk and gv rows receive from every query of that slice only, so slices are independent tasks.
  parallel_for(g.slices, 3 * g.nq * g.nk * g.dh, [&](std::int64_t begin, std::int64_t end) {
    std::vector<T> query(static_cast<std::size_t>(g.dh)), grad_query(static_cast<std::size_t>(g.dh));
    for (std::int64_t bh = begin; bh < end; ++bh) {
      grad_keys.fill_zero(bh, g.nk, g.dh);
      grad_values.fill_zero(bh, g.nk, g.dh);
      for (std::int64_t i = 0; i < g.nq; ++i) {
        const T* m = g.metric_row<T>(metric, bh, i);
        scaled_query(queries.row(bh, i), m, scale, g.dh, query.data());
        const T* grad_out = grad_outputs.row(bh, i);
        const T delta = dot(grad_out, outputs.row(bh, i), g.dh);  // sum_j P_ij dP_ij
        const T row_lse = lse.data<T>()[bh * g.nq + i];
        std::fill(grad_query.begin(), grad_query.end(), T(0));
        for (std::int64_t j = 0; j < g.visible(i); ++j) {
          const T p = std::exp(dot(query.data(), keys.row(bh, j), g.dh) - row_lse);
          const T grad_score = p * (dot(grad_out, values.row(bh, j), g.dh) - delta);
          axpy(p, grad_out, grad_values.row(bh, j), g.dh);
          axpy(grad_score, query.data(), grad_keys.row(bh, j), g.dh);
          axpy(grad_score, keys.row(bh, j), grad_query.data(), g.dh);
        }
        T* grad_q = grad_queries.row(bh, i);
        for (std::int64_t d = 0; d < g.dh; ++d) grad_q[d] = scale * (m ? m[d] : T(1)) * grad_query[d];
      }
    }
  });
}

// ---- f32 through the own GEMM ----
// A block of query rows at a time: its scores against every key it sees are one product, their softmax runs
// while they are in cache, and the block's output is a second product. The [Nq, Nk] probabilities are never
// stored, and with a causal mask the keys after a block's last query are never touched. The backward
// recomputes each block's probabilities from lse and forms the gradients with five products per block.

constexpr std::int64_t kQueryBlock = 48;

// p[j] = e^(p[j] - shift) for j < n, 16 at a time; returns their sum.
__attribute__((target("avx512f"))) float exp_shifted_sum(float* p, std::int64_t n, float shift) {
  const __m512 shift16 = _mm512_set1_ps(shift);
  __m512 total = _mm512_setzero_ps();
  for (std::int64_t j = 0; j < n; j += 16) {
    const __mmask16 lanes = cpu::lanes_from(j, n);
    const __m512 e = cpu::exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, p + j), shift16));
    _mm512_mask_storeu_ps(p + j, lanes, e);
    total = _mm512_mask_add_ps(total, lanes, total, e);
  }
  // (Through memory: GCC 12 warns inside _mm512_reduce_add_ps.)
  alignas(64) float partial[16];
  _mm512_store_ps(partial, total);
  return std::accumulate(partial, partial + 16, 0.0f);
}

// From a row of scores s (in p) and of dP (in ds): P = e^(s - lse) into p, dS = P (dP - delta) into ds.
__attribute__((target("avx512f"))) void probs_and_score_grads(float* p, float* ds, std::int64_t n, float lse,
                                                              float delta) {
  const __m512 lse16 = _mm512_set1_ps(lse), delta16 = _mm512_set1_ps(delta);
  for (std::int64_t j = 0; j < n; j += 16) {
    const __mmask16 lanes = cpu::lanes_from(j, n);
    const __m512 prob = cpu::exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, p + j), lse16));
    _mm512_mask_storeu_ps(p + j, lanes, prob);
    _mm512_mask_storeu_ps(ds + j, lanes,
                          _mm512_mul_ps(prob, _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, ds + j), delta16)));
  }
}  // rows per block: a multiple of the GEMM's 12-row register tile

bool blocked_kernels_for(DType dtype) { return dtype == DType::f32 && cpu::sgemm_available(); }

// Without a mask there is nothing to skip: a short sequence is one block (fewer, larger products).
std::int64_t query_block_rows(const AttentionGeometry& g) {
  return !g.causal && g.nq <= 2 * kQueryBlock ? g.nq : kQueryBlock;
}

// One block of a slice: query rows [begin, begin + rows), which see keys [0, keys) between them.
struct QueryBlock {
  std::int64_t begin, rows, keys;
};

template <class Body>
void for_each_query_block(const AttentionGeometry& g, const Body& body) {
  const std::int64_t block = query_block_rows(g);
  for (std::int64_t begin = 0; begin < g.nq; begin += block) {
    const std::int64_t rows = std::min(block, g.nq - begin);
    body(QueryBlock{begin, rows, g.visible(begin + rows - 1)});
  }
}

// The block's queries as the scores see them (scale * q * m), rows x dh, and its scores against its keys:
// scores[r * b.keys + j] = queries_r . k_j.
void block_scores(const AttentionGeometry& g, const HeadRows<const float>& q, const HeadRows<const float>& k,
                  const Tensor& metric, std::int64_t bh, const QueryBlock& b, float scale, float* queries,
                  float* scores) {
  for (std::int64_t r = 0; r < b.rows; ++r) {
    const std::int64_t i = b.begin + r;
    scaled_query(q.row(bh, i), g.metric_row<float>(metric, bh, i), scale, g.dh, queries + r * g.dh);
  }
  cpu::sgemm(b.rows, b.keys, g.dh, queries, g.dh, 1, k.row(bh, 0), 1, k.row_stride, scores, b.keys, false, nullptr);
}

void attention_gemm(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric, double scale_in,
                    bool causal, const Tensor& out, const Tensor& lse) {
  const AttentionGeometry g(q, k, metric, causal);
  const auto scale = static_cast<float>(scale_in);
  const std::int64_t block = query_block_rows(g);
  const HeadRows<const float> q_rows(q), k_rows(k), v_rows(v);
  const HeadRows<float> out_rows(out);
  parallel_for(g.slices, g.nq * g.nk * g.dh, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> queries(static_cast<std::size_t>(block * g.dh)), probs(static_cast<std::size_t>(block * g.nk));
    for (std::int64_t bh = begin; bh < end; ++bh) {
      for_each_query_block(g, [&](const QueryBlock& b) {
        block_scores(g, q_rows, k_rows, metric, bh, b, scale, queries.data(), probs.data());
        for (std::int64_t r = 0; r < b.rows; ++r) {
          float* p = probs.data() + r * b.keys;
          const std::int64_t visible = g.visible(b.begin + r);
          const float max = cpu::lane_max<float>(visible, [p](std::int64_t j) { return p[j]; });
          const float total = exp_shifted_sum(p, visible, max);
          const float inv = 1.0f / total;
          for (std::int64_t j = 0; j < visible; ++j) p[j] *= inv;
          std::fill(p + visible, p + b.keys, 0.0f);
          lse.data<float>()[bh * g.nq + b.begin + r] = max + std::log(total);
        }
        cpu::sgemm(b.rows, g.dh, b.keys, probs.data(), b.keys, 1, v_rows.row(bh, 0), v_rows.row_stride, 1,
                   out_rows.row(bh, b.begin), out_rows.row_stride, false, nullptr);
      });
    }
  });
}

void attention_backward_gemm(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric,
                             const Tensor& out, const Tensor& lse, const Tensor& gout, double scale_in, bool causal,
                             const Tensor& gq, const Tensor& gk, const Tensor& gv) {
  const AttentionGeometry g(q, k, metric, causal);
  const auto scale = static_cast<float>(scale_in);
  const std::int64_t block = query_block_rows(g);
  const HeadRows<const float> q_rows(q), k_rows(k), v_rows(v), out_rows(out), gout_rows(gout);
  const HeadRows<float> gq_rows(gq), gk_rows(gk), gv_rows(gv);
  // A slice's gk and gv rows receive from every query of that slice only, so slices are independent tasks.
  parallel_for(g.slices, 3 * g.nq * g.nk * g.dh, [&](std::int64_t begin, std::int64_t end) {
    const auto scores_size = static_cast<std::size_t>(block * g.nk), rows_size = static_cast<std::size_t>(block * g.dh);
    std::vector<float> queries(rows_size), grad_queries(rows_size), probs(scores_size), grad_scores(scores_size);
    for (std::int64_t bh = begin; bh < end; ++bh) {
      const float* keys = k_rows.row(bh, 0);
      const float* values = v_rows.row(bh, 0);
      float* grad_keys = gk_rows.row(bh, 0);
      float* grad_values = gv_rows.row(bh, 0);
      gk_rows.fill_zero(bh, g.nk, g.dh);
      gv_rows.fill_zero(bh, g.nk, g.dh);
      for_each_query_block(g, [&](const QueryBlock& b) {
        const std::int64_t first_row = bh * g.nq + b.begin;  // in lse
        const float* grad_out = gout_rows.row(bh, b.begin);
        block_scores(g, q_rows, k_rows, metric, bh, b, scale, queries.data(), probs.data());
        // dP = gout v^T over the block's keys
        cpu::sgemm(b.rows, b.keys, g.dh, grad_out, gout_rows.row_stride, 1, values, 1, v_rows.row_stride,
                   grad_scores.data(), b.keys, false, nullptr);
        for (std::int64_t r = 0; r < b.rows; ++r) {
          float* p = probs.data() + r * b.keys;
          float* ds = grad_scores.data() + r * b.keys;
          const std::int64_t visible = g.visible(b.begin + r);
          const float row_lse = lse.data<float>()[first_row + r];
          const float* o = out_rows.row(bh, b.begin + r);
          const float* go = grad_out + r * gout_rows.row_stride;
          const float delta = cpu::lane_sum<float>(g.dh, [o, go](std::int64_t d) { return o[d] * go[d]; });
          probs_and_score_grads(p, ds, visible, row_lse, delta);
          std::fill(p + visible, p + b.keys, 0.0f);
          std::fill(ds + visible, ds + b.keys, 0.0f);
        }
        // gv += P^T gout, gk += dS^T (scale q m), gq = scale m (dS k)
        cpu::sgemm(b.keys, g.dh, b.rows, probs.data(), 1, b.keys, grad_out, gout_rows.row_stride, 1, grad_values,
                   gv_rows.row_stride, true, nullptr);
        cpu::sgemm(b.keys, g.dh, b.rows, grad_scores.data(), 1, b.keys, queries.data(), g.dh, 1, grad_keys,
                   gk_rows.row_stride, true, nullptr);
        cpu::sgemm(b.rows, g.dh, b.keys, grad_scores.data(), b.keys, 1, keys, k_rows.row_stride, 1,
                   grad_queries.data(), g.dh, false, nullptr);
        for (std::int64_t r = 0; r < b.rows; ++r) {
          const float* m = g.metric_row<float>(metric, bh, b.begin + r);
          float* grad_q = gq_rows.row(bh, b.begin + r);
          for (std::int64_t d = 0; d < g.dh; ++d) grad_q[d] = scale * (m ? m[d] : 1.0f) * grad_queries[r * g.dh + d];
        }
      });
    }
  });
}

}  // namespace

// Only the blocked kernels are fast. They beat the explicit product, softmax and product with or without a mask:
// they never store the [N, N] probabilities, read q, k and v where the qkv output holds them and write the
// output where the projection reads it, and with a causal mask they skip the keys past each block. Attention
// forward and backward of one vit-s layer (B 128, N 50, 4 heads of 32) took 7.7 ms fused and 8.4-8.9 explicit on
// a quiet 2-core Xeon; a causal gpt-s layer (B 16, N 128) 2.6-2.8 and 3.6-3.9 ms.
bool CpuBackend::supports_fused_attention(DType dtype, std::int64_t) const { return is_floating(dtype); }

bool CpuBackend::prefers_fused_attention(DType dtype, bool) const { return blocked_kernels_for(dtype); }

void CpuBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric, double scale,
                           bool causal, const Tensor& out, const Tensor& lse) {
  if (blocked_kernels_for(q.dtype())) {
    attention_gemm(q, k, v, metric, scale, causal, out, lse);
    return;
  }
  dispatch_floating(q.dtype(), "attention", [&](auto tag) {
    attention_typed<decltype(tag)>(q, k, v, metric, scale, causal, out, lse);
  });
}

void CpuBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric,
                                    const Tensor& out, const Tensor& lse, const Tensor& gout, double scale, bool causal,
                                    const Tensor& gq, const Tensor& gk, const Tensor& gv) {
  if (blocked_kernels_for(q.dtype())) {
    attention_backward_gemm(q, k, v, metric, out, lse, gout, scale, causal, gq, gk, gv);
    return;
  }
  dispatch_floating(q.dtype(), "attention_backward", [&](auto tag) {
    attention_backward_typed<decltype(tag)>(q, k, v, metric, out, lse, gout, scale, causal, gq, gk, gv);
  });
}

}  // namespace ellipse
