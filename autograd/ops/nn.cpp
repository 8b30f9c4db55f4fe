// Neural-network ops with their own kernels: softmax, log_softmax, scaled_softmax, scaled_dot_product_attention,
// elliptical_metric (no gradient: a stop-gradient by definition), layer_norm, embedding, cross_entropy, and
// dropout (a mask from the backend times the input).
#include <optional>

#include "autograd/ops/common.hpp"

namespace ellipse {

namespace {

// The attention kernels read [B, H, N, dh] operands as rows along dh in place, at any other strides; views with
// another inner stride are copied first.
Tensor unit_inner_stride(const Tensor& t) { return t.strides()[3] == 1 ? t.detach() : contiguous(t.detach()); }

Tensor softmax_impl(std::string_view op, const Tensor& x, std::int64_t axis_in, bool log) {
  detail::check_defined(op, {&x});
  detail::check_floating(op, x);
  const int axis = normalize_axis(axis_in, x.dim(), op);
  const auto split = detail::split_at(x.shape(), x.dim() == 0 ? -1 : axis);
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  backend_for(x.device()).softmax(contiguous(x.detach()), y, split.outer, split.n, split.inner, log);
  return record(op, y, {x}, [y = y.detach(), split, log](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = empty(g.shape(), g.dtype(), g.device());
    backend_for(g.device()).softmax_backward(y, contiguous(g), gx, split.outer, split.n, split.inner, log);
    return std::vector{gx};
  });
}

}  // namespace

Tensor softmax(const Tensor& x, std::int64_t axis) { return softmax_impl("softmax", x, axis, false); }
Tensor log_softmax(const Tensor& x, std::int64_t axis) { return softmax_impl("log_softmax", x, axis, true); }

Tensor scaled_softmax(const Tensor& x, double scale, bool causal) {
  detail::check_defined("scaled_softmax", {&x});
  detail::check_floating("scaled_softmax", x);
  ELLIPSE_CHECK(x.dim() >= (causal ? 2 : 1), "scaled_softmax: expected {}, got shape {}",
                causal ? "[..., queries, keys] for a causal mask" : "at least one dimension", to_string(x.shape()));
  const std::int64_t n = x.shape().back(), nq = causal ? x.shape()[x.dim() - 2] : 1;
  ELLIPSE_CHECK(!causal || n >= nq, "scaled_softmax: a causal mask needs at least as many keys as queries, got {}",
                to_string(x.shape()));
  const std::int64_t rows = n == 0 ? 0 : x.numel() / n;
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  backend_for(x.device()).scaled_softmax(contiguous(x.detach()), y, rows, nq, n, scale, causal);
  return record("scaled_softmax", y, {x}, [y = y.detach(), rows, n, scale](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = empty(g.shape(), g.dtype(), g.device());
    backend_for(g.device()).scaled_softmax_backward(y, contiguous(g), gx, rows, n, scale);
    return std::vector{gx};
  });
}

bool fused_attention_supported(Device device, DType dtype, std::int64_t head_dim) {
  return backend_for(device).supports_fused_attention(dtype, head_dim);
}

bool fused_attention_preferred(Device device, DType dtype, std::int64_t head_dim, bool causal) {
  return fused_attention_supported(device, dtype, head_dim) && backend_for(device).prefers_fused_attention(dtype, causal);
}

namespace {

// One fused attention forward, as both attention ops run it, and what its backward needs.
struct FusedAttention {
  Tensor q, k, v, m;  // q, k and v as the kernels read them (rows along dh); m as they take it (or undefined)
  Tensor out, lse;
  double scale;
  bool causal;

  // The gradients of q, k and v from out's gradient g, into gq, gk and gv (their shapes; rows along dh).
  void backward(const Tensor& g, const Tensor& gq, const Tensor& gk, const Tensor& gv) const {
    backend_for(g.device()).attention_backward(q, k, v, m, out, lse, unit_inner_stride(g), scale, causal, gq, gk, gv);
  }
};

// Checks the operands and runs the forward kernel. out lives in [B, Nq, H, dh] memory, so that putting the heads
// back together, as a layer does next, is a view.
FusedAttention fused_attention(std::string_view op, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& metric, double scale, bool causal) {
  Backend& backend = detail::same_device_and_dtype(op, {&q, &k, &v});
  detail::check_floating(op, q);
  ELLIPSE_CHECK(q.dim() == 4 && k.dim() == 4 && k.shape() == v.shape() && k.shape()[0] == q.shape()[0] &&
                    k.shape()[1] == q.shape()[1] && k.shape()[3] == q.shape()[3],
                "{}: expected q [B, H, Nq, dh] and k, v [B, H, Nk, dh], got q {}, k {} and v {}", op,
                to_string(q.shape()), to_string(k.shape()), to_string(v.shape()));
  const std::int64_t batch = q.shape()[0], heads = q.shape()[1], nq = q.shape()[2], nk = k.shape()[2];
  const std::int64_t head_dim = q.shape()[3];
  ELLIPSE_CHECK(nk > 0 && head_dim > 0, "{}: needs at least one key and one feature per head, got k {}", op,
                to_string(k.shape()));
  ELLIPSE_CHECK(!causal || nk >= nq, "{}: a causal mask needs at least as many keys as queries, got q {} and k {}", op,
                to_string(q.shape()), to_string(k.shape()));
  ELLIPSE_CHECK(fused_attention_supported(q.device(), q.dtype(), head_dim),
                "{}: {}'s backend has no kernel for {} with head dim {} (see fused_attention_supported; the explicit "
                "path, matmul and scaled_softmax, takes any)", op, q.device().str(), dtype_name(q.dtype()), head_dim);
  FusedAttention a{.q = unit_inner_stride(q), .k = unit_inner_stride(k), .v = unit_inner_stride(v), .m = {},
                   .out = empty({batch, nq, heads, head_dim}, q.dtype(), q.device()).transpose(1, 2),
                   .lse = empty({batch, heads, nq}, q.dtype(), q.device()), .scale = scale, .causal = causal};
  if (metric.defined()) {  // as the kernels take it: [B, H, 1, dh] when shared by the queries, else q's shape
    detail::same_device_and_dtype(op, {&q, &metric});
    const bool per_row = metric.dim() >= 2 && metric.shape()[metric.dim() - 2] != 1;
    Shape shape = q.shape();
    if (!per_row) shape[2] = 1;
    ELLIPSE_CHECK(metric.dim() <= 4 && broadcast_shapes(metric.shape(), shape, op) == shape,
                  "{}: metric {} broadcasts to neither {} nor q {}", op, to_string(metric.shape()),
                  to_string(Shape{batch, heads, 1, head_dim}), to_string(q.shape()));
    a.m = contiguous(expand(metric.detach(), shape));
  }
  backend.attention(a.q, a.k, a.v, a.m, scale, causal, a.out, a.lse);
  return a;
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& metric,
                                    double scale, bool causal) {
  constexpr std::string_view op = "scaled_dot_product_attention";
  FusedAttention a = fused_attention(op, q, k, v, metric, scale, causal);
  Tensor out = a.out;
  a.out = out.detach();  // the rule keeps no handle on its own result (a cycle)
  return record(op, out, {q, k, v}, [a](const Tensor& g, const std::vector<bool>&) {
    Tensor gq = empty(a.q.shape(), g.dtype(), g.device());
    Tensor gk = empty(a.k.shape(), g.dtype(), g.device()), gv = empty(a.v.shape(), g.dtype(), g.device());
    a.backward(g, gq, gk, gv);
    return std::vector{gq, gk, gv};
  });
}

Tensor scaled_dot_product_attention_qkv(const Tensor& qkv, const Tensor& metric, double scale, bool causal) {
  constexpr std::string_view op = "scaled_dot_product_attention_qkv";
  detail::check_defined(op, {&qkv});
  ELLIPSE_CHECK(qkv.dim() == 5 && qkv.shape()[0] == 3,
                "{}: expected qkv [3, B, H, N, dh] (q, k and v stacked on the first axis), got {}", op,
                to_string(qkv.shape()));
  const Tensor parts = qkv.detach();
  FusedAttention a = fused_attention(op, select(parts, 0, 0), select(parts, 0, 1), select(parts, 0, 2), metric,
                                     scale, causal);
  Tensor out = a.out;
  a.out = out.detach();
  // The gradient takes qkv's memory layout where dh is innermost in it (the kernels write rows along dh): for a
  // layer's qkv projection it then reaches the projection through views only, and q, k and v get theirs
  // without a zero-filled buffer to add them into.
  std::vector<std::int64_t> order = dense_axis_order(qkv.shape(), qkv.strides()).value_or(std::vector<std::int64_t>{});
  if (!order.empty() && order.back() != 4) order.clear();
  return record(op, out, {qkv}, [a, order = std::move(order), shape = qkv.shape()](const Tensor& g,
                                                                                  const std::vector<bool>&) {
    const Tensor gqkv = detail::empty_in_order(shape, order, g.dtype(), g.device());
    a.backward(g, select(gqkv, 0, 0), select(gqkv, 0, 1), select(gqkv, 0, 2));
    return std::vector{gqkv};
  });
}

EllipticalMetric elliptical_metric(const Tensor& v, const Tensor& v_prev, bool causal, const Tensor& past_sum,
                                   std::int64_t past) {
  constexpr std::string_view op = "elliptical_metric";
  Backend& backend = detail::same_device_and_dtype(op, {&v, &v_prev});
  detail::check_floating(op, v);
  ELLIPSE_CHECK(v.dim() == 4 && v.shape() == v_prev.shape(),
                "{}: expected value heads v and v_prev of one shape [B, H, N, dh], got {} and {}", op,
                to_string(v.shape()), to_string(v_prev.shape()));
  const Shape& shape = v.shape();
  const Shape sum_shape{shape[0], shape[1], 1, shape[3]};
  ELLIPSE_CHECK(past >= 0 && past_sum.defined() == (past > 0),
                "{}: a running sum goes with a positive count of earlier tokens, got past {} and {} sum", op, past,
                past_sum.defined() ? "a" : "no");
  if (past_sum.defined()) {
    detail::same_device_and_dtype(op, {&v, &past_sum});
    ELLIPSE_CHECK(past_sum.shape() == sum_shape, "{}: expected past_sum {}, got {}", op, to_string(sum_shape),
                  to_string(past_sum.shape()));
  }
  EllipticalMetric result{.metric = empty(causal ? shape : sum_shape, v.dtype(), v.device()),
                          .sum = empty(sum_shape, v.dtype(), v.device())};
  backend.elliptical_metric(unit_inner_stride(v), unit_inner_stride(v_prev),
                            past_sum.defined() ? contiguous(past_sum.detach()) : Tensor{},
                            past, causal, result.metric, result.sum);
  return result;
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  Backend& backend = detail::same_device_and_dtype("layer_norm", {&x, &weight, &bias});
  detail::check_floating("layer_norm", x);
  ELLIPSE_CHECK(x.dim() >= 1, "layer_norm: input must have at least one dimension");
  const std::int64_t n = x.shape().back();
  ELLIPSE_CHECK(weight.shape() == Shape{n} && bias.shape() == Shape{n},
                "layer_norm: weight {} and bias {} must both be [{}] for input {}", to_string(weight.shape()),
                to_string(bias.shape()), n, to_string(x.shape()));
  ELLIPSE_CHECK(eps > 0, "layer_norm: eps must be positive, got {}", eps);
  const Tensor xc = contiguous(x.detach()), w = contiguous(weight.detach()), b = contiguous(bias.detach());
  const std::int64_t rows = n == 0 ? 0 : x.numel() / n;
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  Tensor mu = empty({rows}, x.dtype(), x.device()), rstd = empty({rows}, x.dtype(), x.device());
  backend.layer_norm(xc, w, b, eps, y, mu, rstd);
  return record("layer_norm", y, {x, weight, bias}, [xc, w, mu, rstd](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = empty(xc.shape(), xc.dtype(), xc.device());
    Tensor gw = zeros_like(w), gb = zeros_like(w);
    backend_for(g.device()).layer_norm_backward(xc, w, mu, rstd, contiguous(g), gx, gw, gb);
    return std::vector{gx, gw, gb};
  });
}

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  detail::check_defined("embedding", {&weight, &ids});
  detail::check_floating("embedding", weight);
  ELLIPSE_CHECK(weight.dim() == 2, "embedding: weight must be [vocab, dim], got {}", to_string(weight.shape()));
  ELLIPSE_CHECK(ids.device() == weight.device(), "embedding: ids are on {}, weight on {}", ids.device().str(),
                weight.device().str());
  const std::int64_t vocab = weight.shape()[0], n = weight.shape()[1];
  detail::check_ids("embedding", ids, vocab, "id", std::nullopt);
  Shape shape = ids.shape();
  shape.push_back(n);
  Tensor out = empty(shape, weight.dtype(), weight.device());
  const Tensor flat_ids = contiguous(ids);
  backend_for(weight.device()).embedding(contiguous(weight.detach()), flat_ids, out);
  return record("embedding", out, {weight}, [flat_ids, wshape = weight.shape()](const Tensor& g, const std::vector<bool>&) {
    Tensor gw = zeros(wshape, g.dtype(), g.device());
    backend_for(g.device()).embedding_backward(flat_ids, contiguous(g), gw);
    return std::vector{gw};
  });
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, std::int64_t ignore_index) {
  detail::check_defined("cross_entropy", {&logits, &targets});
  detail::check_floating("cross_entropy", logits);
  ELLIPSE_CHECK(logits.dim() >= 1, "cross_entropy: logits need a class axis, got shape {}", to_string(logits.shape()));
  const Shape row_shape(logits.shape().begin(), logits.shape().end() - 1);
  ELLIPSE_CHECK(targets.shape() == row_shape, "cross_entropy: targets {} must have the logits' shape {} without its "
                "class axis, i.e. {}", to_string(targets.shape()), to_string(logits.shape()), to_string(row_shape));
  ELLIPSE_CHECK(targets.device() == logits.device(), "cross_entropy: targets are on {}, logits on {}",
                targets.device().str(), logits.device().str());
  const std::int64_t classes = logits.shape().back(), rows = numel(row_shape);
  ELLIPSE_CHECK(classes > 0, "cross_entropy: logits {} have no classes", to_string(logits.shape()));
  const std::int64_t counted = detail::check_ids("cross_entropy", targets, classes, "target", ignore_index);

  const Tensor flat = reshape(contiguous(logits.detach()), {rows, classes});
  const Tensor flat_targets = reshape(contiguous(targets), {rows});
  Tensor losses = empty({rows}, logits.dtype(), logits.device()), lse = empty({rows}, logits.dtype(), logits.device());
  Backend& backend = backend_for(logits.device());
  backend.cross_entropy(flat, flat_targets, ignore_index, losses, lse);
  // With every target ignored the mean is defined as 0 (and so is its gradient), not 0/0.
  const double scale = counted == 0 ? 0.0 : 1.0 / static_cast<double>(counted);
  Tensor loss = mul(sum(losses), scale);
  return record("cross_entropy", loss, {logits},
                [flat, flat_targets, lse, ignore_index, scale, shape = logits.shape()](const Tensor& g,
                                                                                       const std::vector<bool>&) {
                  Tensor grad = empty(flat.shape(), flat.dtype(), flat.device());
                  backend_for(flat.device()).cross_entropy_backward(flat, flat_targets, lse, ignore_index, scale, grad);
                  return std::vector{reshape(mul(grad, g), shape)};
                });
}

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  detail::check_defined("dropout", {&x});
  ELLIPSE_CHECK(p >= 0.0 && p < 1.0, "dropout: probability must be in [0, 1), got {}", p);
  if (!training || p == 0.0) return x;
  detail::check_floating("dropout", x);
  Tensor mask = empty(x.shape(), x.dtype(), x.device());
  backend_for(x.device()).dropout_mask(mask, p, gen.next_u64());
  return mul(x, mask);
}

}  // namespace ellipse
