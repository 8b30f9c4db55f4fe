#pragma once
// The one interface every device implements. Ops (autograd/ops/) validate shapes and dtypes, allocate
// outputs and call these kernels; a kernel trusts its arguments: outputs are allocated on the backend's
// device with the documented shape, and inputs have been broadcast (expanded) to it where stated.
//
// Layout words used below: "strided" means any strides (including 0 from expand); "contiguous" means
// row-major with no gaps. A kernel never resizes or reallocates an output.
#include <cmath>
#include <cstdint>
#include <memory>

#include "core/device.hpp"
#include "core/tensor.hpp"

namespace ellipse {

enum class UnaryOp {
  neg, exp, log, sqrt, abs, tanh, sigmoid, relu, gelu, sin, cos,
  add_scalar,   // x + a
  mul_scalar,   // x * a
  pow_scalar,   // x ^ a
  clamp,        // min(max(x, a), b)
  // Derivatives used by backward rules, as functions of the forward input x.
  sign,         // -1, 0, 1
  step,         // 1 where x > 0 (relu')
  inside,       // 1 where a <= x <= b (clamp')
};

enum class BinaryOp {
  add, sub, mul, div,
  maximum, minimum,  // NaN where either input is NaN
  eq, ne, gt, lt, ge, le,  // comparisons: 1 where a == b (!=, >, <, >=, <=) holds, else 0; any dtype
  gelu_backward,  // a * gelu'(b): GELU's backward in one pass, a the output's gradient and b the forward input
};

enum class ReduceOp { sum, max };

// One AdamW update (PyTorch's formulation): decay, then moments, then the bias-corrected step.
struct AdamWStep {
  double lr, beta1, beta2, eps, weight_decay;
  double bias_correction1, bias_correction2;  // 1 - beta^t
  // The update's constants, computed once in double by every backend alike:
  // p = p * decay - step_size * m / (sqrt(v) * inv_sqrt_bias_correction2 + eps).
  double decay() const { return 1.0 - lr * weight_decay; }
  double step_size() const { return lr / bias_correction1; }
  double inv_sqrt_bias_correction2() const { return 1.0 / std::sqrt(bias_correction2); }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::shared_ptr<Storage> allocate(std::size_t bytes) = 0;
  // Host <-> device transfer of `bytes` bytes. The CPU backend just copies.
  virtual void copy_from_host(void* device_dst, const void* host_src, std::size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) = 0;
  // Waits until all queued work has finished (for timing); the CPU runs everything before returning.
  virtual void synchronize() {}
  // Bytes held by live tensors, at most since the last reset_peak_memory (0 where nothing is counted).
  virtual std::size_t peak_memory_bytes() const { return 0; }
  virtual void reset_peak_memory() {}
  // TF32 tensor-core products (CUDA; about 10 mantissa bits). Backends without it refuse `true`.
  virtual void set_tf32(bool on);

  // out[i] = value.
  virtual void fill(const Tensor& out, double value) = 0;
  // out[i] = start + i * step; out is contiguous and 1-D.
  virtual void arange(const Tensor& out, double start, double step) = 0;
  // Strided copy between same-shaped tensors, converting dtype if they differ.
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;

  // Elementwise; x (and a, b, cond) strided with out's shape; out may alias an input with equal layout.
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out, double a = 0, double b = 0) = 0;
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) = 0;

  // x contiguous, viewed as [outer, n, inner]; out contiguous [outer, inner]. Reduces the middle axis.
  virtual void reduce(ReduceOp op, const Tensor& x, const Tensor& out, std::int64_t outer, std::int64_t n,
                      std::int64_t inner) = 0;
  // Inclusive prefix sum along the middle axis of contiguous [outer, n, inner]; `reverse` sums from the end.
  virtual void cumsum(const Tensor& x, const Tensor& out, std::int64_t outer, std::int64_t n, std::int64_t inner,
                      bool reverse) = 0;

  // out[..., M, N] = a[..., M, K] @ b[..., K, N]. a and b are strided with the batch dims already
  // broadcast to out's; the last two dims of each may be row- or column-major (transposed views).
  // out is contiguous. When `accumulate`, adds into out instead of overwriting it.
  virtual void matmul(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate = false) = 0;
  // A linear layer's forward: out[rows, N] = bias[N] + a[rows, K] @ b[K, N], with a, b as in matmul and bias
  // contiguous. This default copies the bias rows into out and accumulates the product onto them; a backend
  // whose GEMM can start from the bias overrides it and saves that pass over out.
  virtual void linear(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out);
  // A linear layer's weight and bias gradients from its output's gradient g [rows, N] and its input x [rows, K]
  // (both contiguous): gweight [N, K] = g^T x and gbias [N] = the sums of g's columns (both contiguous). This
  // default runs matmul and reduce; a backend whose GEMM reads all of g anyway sums it on the way and saves
  // that pass over g.
  virtual void linear_weight_grad(const Tensor& g, const Tensor& x, const Tensor& gweight, const Tensor& gbias);

  // Softmax along the middle axis of contiguous [outer, n, inner]; `log` gives log_softmax.
  virtual void softmax(const Tensor& x, const Tensor& y, std::int64_t outer, std::int64_t n, std::int64_t inner,
                       bool log) = 0;
  // gx from y = softmax(x) (or log_softmax when `log`) and gy; same layout as softmax.
  virtual void softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, std::int64_t outer,
                                std::int64_t n, std::int64_t inner, bool log) = 0;

  // Softmax of scale * x along the contiguous rows of x [rows, n] into y. With `causal`, row r is query
  // r % nq of a block of nq rows and keeps columns j <= r % nq + n - nq (n >= nq); the others get 0.
  virtual void scaled_softmax(const Tensor& x, const Tensor& y, std::int64_t rows, std::int64_t nq, std::int64_t n,
                              double scale, bool causal) = 0;
  // gx = scale * y * (gy - sum(gy * y)) per row, from y = scaled_softmax(x) and gy; all [rows, n] contiguous.
  virtual void scaled_softmax_backward(const Tensor& y, const Tensor& gy, const Tensor& gx, std::int64_t rows,
                                       std::int64_t n, double scale) = 0;

  // Whether attention() and attention_backward() have kernels here for this dtype and head dim: the fused
  // attention ops refuse what a backend does not support, and the layers then take the explicit path.
  virtual bool supports_fused_attention(DType dtype, std::int64_t head_dim) const = 0;
  // Whether attention() is faster here than the explicit product, softmax and product for this dtype and
  // mask (the layers ask before taking it). The default says yes: a fused kernel skips the [Nq, Nk] scores.
  virtual bool prefers_fused_attention(DType dtype, bool causal) const;
  // Fused attention, per (b, h): out = softmax(S) v with S = scale * (q * m) k^T, without storing S. q and out
  // are [B, H, Nq, dh], k and v [B, H, Nk, dh] (Nk >= 1), each with unit stride along dh and any other strides
  // (views of one qkv output; out a view of [B, Nq, H, dh] memory). metric is undefined (m = 1) or
  // contiguous [B, H, rows, dh] with rows 1 (broadcast over the queries) or Nq (one m per query row). With
  // `causal` (Nk >= Nq), query i sees keys j <= i + Nk - Nq only, as scaled_softmax's rule. Also writes lse
  // [B, H, Nq] (contiguous), the natural log-sum-exp of each row of S over the keys it sees, for the backward.
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric, double scale,
                         bool causal, const Tensor& out, const Tensor& lse) = 0;
  // Gradients of attention() from gout (out's shape), recomputing P = exp(S - lse) from the forward's out and
  // lse: with D_i = gout_i . out_i and dS = P * (gout v^T - D), gv = P^T gout, gk = scale * dS^T (q * m) and
  // gq = scale * m * (dS k). m is a constant (it gets no gradient). gq, gk, gv (the shapes of q, k, v) are
  // overwritten. Every [B, H, N, dh] operand has unit stride along dh and any other strides, as above.
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric,
                                  const Tensor& out, const Tensor& lse, const Tensor& gout, double scale, bool causal,
                                  const Tensor& gq, const Tensor& gk, const Tensor& gv) = 0;

  // Elliptical attention's metric. v and v_prev [B, H, N, dh] (any strides, unit stride along dh): per (b, h),
  // sum = past_sum + sum_n |v[n] - v_prev[n]| (past_sum [B, H, 1, dh] contiguous, or undefined for 0) into sum
  // [B, H, 1, dh]; m = s / max_d s with s = sum / (past + N) into metric [B, H, 1, dh], or with `causal` the
  // prefix means s_i = (past_sum + sum_{n <= i} |...|) / (past + i + 1) into metric [B, H, N, dh] (contiguous).
  virtual void elliptical_metric(const Tensor& v, const Tensor& v_prev, const Tensor& past_sum, std::int64_t past,
                                 bool causal, const Tensor& metric, const Tensor& sum) = 0;

  // Layer norm over the last axis of contiguous x [rows, n]; weight and bias [n]. Saves mean and rstd [rows].
  virtual void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& y,
                          const Tensor& mean, const Tensor& rstd) = 0;
  // Writes gx; adds into gweight and gbias (zeroed by the caller).
  virtual void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& gy, const Tensor& gx, const Tensor& gweight,
                                   const Tensor& gbias) = 0;

  // out[i, :] = weight[ids[i], :]; ids contiguous i64 [rows] (validated by the op), weight [V, n] contiguous.
  virtual void embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) = 0;
  // gweight[ids[i], :] += gy[i, :] (gweight zeroed by the caller; repeated ids accumulate).
  virtual void embedding_backward(const Tensor& ids, const Tensor& gy, const Tensor& gweight) = 0;

  // out[p] = x[p with p[axis] replaced by index[p]] at every position p of out. index (i64, each in
  // [0, x.shape[axis]): validated by the op) has out's shape, and x's other axes are at least as long; all three
  // strided. Any dtype.
  virtual void gather(const Tensor& x, const Tensor& index, int axis, const Tensor& out) = 0;
  // gather's adjoint: out[p with p[axis] replaced by index[p]] += src[p] at every position p of src (index of
  // src's shape, as above; out zeroed by the caller; repeated indices accumulate). All three strided.
  virtual void scatter_add(const Tensor& src, const Tensor& index, int axis, const Tensor& out) = 0;

  // The indices of the k largest entries (the k smallest unless `largest`) along the middle axis of contiguous x
  // [outer, n, inner] (k <= n), best first, into contiguous i64 indices [outer, k, inner]. NaN ranks above every
  // number; equal entries keep their index order.
  virtual void topk(const Tensor& x, const Tensor& indices, std::int64_t outer, std::int64_t n, std::int64_t inner,
                    std::int64_t k, bool largest) = 0;

  // Per-row cross-entropy of contiguous logits [rows, classes] against i64 targets [rows]. Rows whose
  // target equals ignore_index get loss 0. Writes losses [rows] and the log-sum-exp lse [rows].
  virtual void cross_entropy(const Tensor& logits, const Tensor& targets, std::int64_t ignore_index,
                             const Tensor& losses, const Tensor& lse) = 0;
  // glogits = scale * (softmax(logits) - onehot(target)) for rows not ignored, 0 for ignored rows.
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                      std::int64_t ignore_index, double scale, const Tensor& glogits) = 0;

  // In place on contiguous param, m, v of one shape, with grad of that shape.
  virtual void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                          const AdamWStep& step) = 0;

  // mask[i] = keep ? 1/(1-p) : 0 with keep drawn from mix64(seed, i) (contiguous mask).
  virtual void dropout_mask(const Tensor& mask, double p, std::uint64_t seed) = 0;
};

// The backend that owns `device`; throws when that backend is not compiled in or has no device.
Backend& backend_for(Device device);
// How many CUDA devices this process can use: 0 in a build without the CUDA backend, or without a usable driver.
int cuda_device_count();

}  // namespace ellipse
