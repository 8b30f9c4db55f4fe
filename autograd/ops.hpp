#pragma once
// The op set. Every op validates its inputs (throwing ellipse::Error naming the op and the shapes), runs
// the kernel of its inputs' backend, and records its backward rule when an input requires grad.
// Where each op lives: autograd/ops/<family>.cpp (forward + backward), backends/<device>/<family>.cpp
// (kernels). See docs/architecture.md.
#include <cstdint>
#include <vector>

#include "../core/random.hpp"
#include "../core/tensor.hpp"

namespace ellipse {

// ---- views and copies (autograd/ops/views.cpp) ----
Tensor reshape(const Tensor& x, const Shape& shape);  // a view when strides allow, else a copy; one -1 allowed
Tensor view(const Tensor& x, const Shape& shape);     // like reshape, but throws instead of copying
Tensor permute(const Tensor& x, const std::vector<std::int64_t>& order);
Tensor transpose(const Tensor& x, std::int64_t a, std::int64_t b);
Tensor narrow(const Tensor& x, std::int64_t axis, std::int64_t start, std::int64_t length);
Tensor slice(const Tensor& x, std::int64_t axis, std::int64_t start, std::int64_t end, std::int64_t step = 1);
Tensor select(const Tensor& x, std::int64_t axis, std::int64_t index);  // drops the axis
Tensor expand(const Tensor& x, const Shape& shape);                    // broadcast view, stride 0
Tensor unsqueeze(const Tensor& x, std::int64_t axis);
Tensor squeeze(const Tensor& x, std::int64_t axis);
Tensor contiguous(const Tensor& x);  // x itself when already contiguous
Tensor clone(const Tensor& x);       // always a fresh contiguous copy
Tensor to_dtype(const Tensor& x, DType dtype);
Tensor to_device(const Tensor& x, Device device);
Tensor concat(const std::vector<Tensor>& xs, std::int64_t axis);
// Tensors of one shape side by side along a new axis (-(dim + 1) to dim): that shape with len(xs) inserted at axis.
Tensor stack(const std::vector<Tensor>& xs, std::int64_t axis);
std::vector<Tensor> split(const Tensor& x, const std::vector<std::int64_t>& sizes, std::int64_t axis);
// Sums `x` over broadcast dimensions down to `shape` (the adjoint of expand).
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- elementwise (autograd/ops/elementwise.cpp); binary ops broadcast by NumPy rules ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& x, double s);
Tensor sub(const Tensor& x, double s);
Tensor mul(const Tensor& x, double s);
Tensor div(const Tensor& x, double s);
Tensor rsub(const Tensor& x, double s);  // s - x
Tensor neg(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor sin(const Tensor& x);  // of x in radians, x's shape; gradient cos(x)
Tensor cos(const Tensor& x);  // of x in radians, x's shape; gradient -sin(x)
Tensor clamp(const Tensor& x, double low, double high);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x);  // tanh approximation
// The larger (smaller) of a and b, broadcast; NaN where either is NaN. The gradient goes to the larger (smaller)
// input, split equally where they tie, as max's does.
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor equal(const Tensor& a, const Tensor& b);  // 1 where equal, else 0; same dtype as the inputs; no gradient
// The other comparisons, as equal: 1 where the relation holds, else 0, broadcast, in the inputs' dtype (any
// dtype, i64 too); no gradient. A NaN compares false, except not_equal's, which is true.
Tensor not_equal(const Tensor& a, const Tensor& b);      // a != b
Tensor greater(const Tensor& a, const Tensor& b);        // a > b
Tensor less(const Tensor& a, const Tensor& b);           // a < b
Tensor greater_equal(const Tensor& a, const Tensor& b);  // a >= b
Tensor less_equal(const Tensor& a, const Tensor& b);     // a <= b
// cond != 0 picks a, else b; all three broadcast. Gradients flow to a and b.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);  // x where mask == 0, else value
// [n, n] f32 mask, 1 above the diagonal (the future), for masked_fill(scores, causal_mask(n), -inf).
Tensor causal_mask(std::int64_t n, Device device = Device::cpu());

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, double s);
Tensor operator-(const Tensor& a, double s);
Tensor operator*(const Tensor& a, double s);
Tensor operator/(const Tensor& a, double s);
Tensor operator+(double s, const Tensor& a);
Tensor operator-(double s, const Tensor& a);
Tensor operator*(double s, const Tensor& a);
Tensor operator-(const Tensor& a);

// ---- reductions and scans (autograd/ops/reduce.cpp); an empty axis list means all axes ----
Tensor sum(const Tensor& x, const std::vector<std::int64_t>& axes = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<std::int64_t>& axes = {}, bool keepdim = false);
// Gradient splits equally between tied maxima.
Tensor max(const Tensor& x, const std::vector<std::int64_t>& axes = {}, bool keepdim = false);
Tensor cumsum(const Tensor& x, std::int64_t axis);

// ---- indexing (autograd/ops/indexing.cpp); indices are i64, and one outside [0, size) throws ----
// x's entries at `index` (1-D) along `axis`: x's shape with index's length there. Any dtype; gradient to x.
Tensor index_select(const Tensor& x, std::int64_t axis, const Tensor& index);
// PyTorch's gather: out[p] = x[p with p[axis] = index[p]], of index's shape (x's rank, no axis longer than x's but
// `axis`). Any dtype; the gradient is scatter-added back to x, repeated indices accumulating.
Tensor gather(const Tensor& x, std::int64_t axis, const Tensor& index);
// The k largest entries of x along `axis` (the k smallest unless `largest`), best first, and their i64 indices: both
// x's shape with k at axis. NaN ranks above every number; equal entries keep their index order. The gradient of
// values goes back to the entries picked (gather's).
struct TopK {
  Tensor values, indices;
};
TopK topk(const Tensor& x, std::int64_t k, std::int64_t axis = -1, bool largest = true);
// The i64 index of the largest entry along `axis` (the first among equals; NaN ranks highest): x's shape without
// the axis (kept as 1 with keepdim). No gradient.
Tensor argmax(const Tensor& x, std::int64_t axis, bool keepdim = false);
// A random permutation of 0..n-1, i64 [n], drawn from gen (one permutation per seed on every device); e.g. rows
// shuffled by index_select(x, 0, randperm(n, gen)).
Tensor randperm(std::int64_t n, Generator& gen = default_generator(), Device device = Device::cpu());

// ---- linear algebra (autograd/ops/matmul.cpp) ----
// 1-D, 2-D and batched: [..., M, K] @ [..., K, N] with the batch dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b);
// A linear layer, PyTorch's layout: x [..., in] @ weight[out, in]^T + bias [out] (bias may be undefined).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = {});

// ---- neural-network ops (autograd/ops/nn.cpp) ----
Tensor softmax(const Tensor& x, std::int64_t axis);
Tensor log_softmax(const Tensor& x, std::int64_t axis);
// Attention's probabilities in one pass: softmax over the last axis of scale * x. With `causal`, x is
// [..., Nq, Nk] with Nk >= Nq and query i sees keys j <= i + Nk - Nq only (the others get probability 0):
// softmax(masked_fill(x * scale, mask, -inf), -1) without the mask, the scaled copy and the fill.
Tensor scaled_softmax(const Tensor& x, double scale, bool causal);
// Attention in one op, without the [Nq, Nk] scores or probabilities in memory: per batch element and head,
// softmax(scale * (q * m) k^T) v, with q [B, H, Nq, dh], k and v [B, H, Nk, dh] (Nk >= 1; any strides), giving
// [B, H, Nq, dh]. The metric m is undefined (m = 1) or broadcasts to [B, H, 1, dh] (one per head, shared by the
// queries) or to q's shape (one per query row). m is a constant: no gradient reaches it, and q's gradient is m
// times that of q * m. `causal` is scaled_softmax's rule (Nk >= Nq): query i sees keys j <= i + Nk - Nq, i.e.
// Nk - Nq cached keys and its own prefix. Equals matmul(scaled_softmax(matmul(q * m, transpose(k, -1, -2)),
// scale, causal), v) up to rounding. Kernels: see fused_attention_supported.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric,
                                    double scale, bool causal);
// The same with q, k and v stacked in one tensor, qkv [3, B, H, N, dh] (any strides along the first four axes),
// as an attention layer's qkv projection gives them: its gradient is one tensor in qkv's memory layout, so it
// reaches that projection without a buffer to gather q's, k's and v's gradients in.
Tensor scaled_dot_product_attention_qkv(const Tensor& qkv, const Tensor& metric, double scale, bool causal);
// Whether scaled_dot_product_attention has kernels for this device, dtype and head dim, as the device's backend
// answers (Backend::supports_fused_attention): on the CPU for f32 and f64 and any head dim, on CUDA for f32 and
// head dims up to 128. Throws as backend_for does when the device has no backend.
bool fused_attention_supported(Device device, DType dtype, std::int64_t head_dim);
// Whether it is also the faster way for this device, dtype, head dim and mask (the device's backend decides:
// on the CPU only f32 attention with the AVX-512 GEMM); the attention layers take it when it is.
bool fused_attention_preferred(Device device, DType dtype, std::int64_t head_dim, bool causal);
// Elliptical attention's metric m from this layer's and the previous layer's value heads v, v_prev
// [B, H, N, dh], in one pass: s = the mean over tokens of |v - v_prev| (with `causal`, the prefix mean over
// tokens 0..i for query row i), m = s / max(max_d s, 1e-12). For incremental decoding, past_sum [B, H, 1, dh]
// is the sum of |v - v_prev| over `past` earlier tokens (undefined when past is 0). Returns m ([B, H, 1, dh],
// or [B, H, N, dh] with `causal`) and the running sum including these tokens. A stop-gradient by definition:
// neither output carries a graph.
struct EllipticalMetric {
  Tensor metric, sum;
};
EllipticalMetric elliptical_metric(const Tensor& v, const Tensor& v_prev, bool causal, const Tensor& past_sum = {},
                                   std::int64_t past = 0);
// Normalises over the last axis; weight and bias have that axis' size.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
Tensor embedding(const Tensor& weight, const Tensor& ids);  // weight [V, n], ids i64 of any shape -> [..., n]
// Mean cross-entropy of logits [..., C] against i64 targets [...]; targets equal to ignore_index count for
// nothing (and not in the mean's denominator).
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, std::int64_t ignore_index = -100);
// Zeroes each element with probability p and scales the rest by 1/(1-p); identity when !training or p == 0.
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen = default_generator());

}  // namespace ellipse
