// Matrix products: 1-D, 2-D and batched with broadcast batch dims; linear layers (x W^T + b).
#include "autograd/ops/common.hpp"

namespace ellipse {

Tensor matmul(const Tensor& a, const Tensor& b) {
  Backend& backend = detail::same_device_and_dtype("matmul", {&a, &b});
  detail::check_floating("matmul", a);
  ELLIPSE_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: both operands need at least one dimension, got {} and {}",
                to_string(a.shape()), to_string(b.shape()));
  // Vectors become matrices and the added axis is dropped again (NumPy's rule). b goes first: for
  // vector @ vector the inner call then squeezes [1, 1] to [1] and this one [1] to [].
  if (b.dim() == 1) return squeeze(matmul(a, unsqueeze(b, 1)), -1);
  if (a.dim() == 1) return squeeze(matmul(unsqueeze(a, 0), b), -2);

  const std::int64_t m = a.shape()[a.dim() - 2], k = a.shape()[a.dim() - 1];
  const std::int64_t kb = b.shape()[b.dim() - 2], n = b.shape()[b.dim() - 1];
  ELLIPSE_CHECK(k == kb, "matmul: shapes {} and {} do not chain (inner sizes {} and {} differ)", to_string(a.shape()),
                to_string(b.shape()), k, kb);
  const Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  Shape shape = broadcast_shapes(batch_a, batch_b, "matmul");
  Shape shape_a = shape, shape_b = shape;
  shape_a.insert(shape_a.end(), {m, k});
  shape_b.insert(shape_b.end(), {k, n});
  shape.insert(shape.end(), {m, n});
  Tensor out = empty(shape, a.dtype(), a.device());
  backend.matmul(a.detach().expand(shape_a), b.detach().expand(shape_b), out);

  return record("matmul", out, {a, b}, [a = a.detach(), b = b.detach()](const Tensor& g, const std::vector<bool>& needs) {
    Tensor ga, gb;
    if (needs[0]) ga = sum_to(matmul(g, transpose(b, -1, -2)), a.shape());
    if (needs[1]) {
      // A shared weight: fold the batch into rows, one GEMM instead of a batch of them and a sum. With an
      // empty inner axis there is nothing to fold (the row count would divide by zero).
      if (b.dim() == 2 && a.dim() > 2 && a.shape().back() > 0) {
        const std::int64_t rows = a.numel() / a.shape().back();
        gb = matmul(transpose(reshape(a, {rows, a.shape().back()}), 0, 1), reshape(g, {rows, g.shape().back()}));
      } else {
        gb = sum_to(matmul(transpose(a, -1, -2), g), b.shape());
      }
    }
    return std::vector{ga, gb};
  });
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  constexpr std::string_view op = "linear";
  Backend& backend = detail::same_device_and_dtype(op, {&x, &weight});
  detail::check_floating(op, x);
  ELLIPSE_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.shape().back() == weight.shape()[1],
                "{}: expected input [..., in] and weight [out, in], got {} and {}", op, to_string(x.shape()),
                to_string(weight.shape()));
  if (!bias.defined()) return matmul(x, transpose(weight, 0, 1));
  detail::same_device_and_dtype(op, {&x, &bias});
  const std::int64_t in = weight.shape()[1], out_features = weight.shape()[0];
  ELLIPSE_CHECK(bias.shape() == Shape{out_features}, "{}: expected bias [{}] for weight {}, got {}", op, out_features,
                to_string(weight.shape()), to_string(bias.shape()));
  std::int64_t rows = 1;
  for (std::int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.shape()[d];
  Shape shape = x.shape();
  shape.back() = out_features;
  Tensor out = empty(shape, x.dtype(), x.device());
  // One call for product and bias: no separate pass over the output adding the bias.
  backend.linear(reshape(x.detach(), {rows, in}), transpose(weight.detach(), 0, 1), contiguous(bias.detach()),
                 out.view({rows, out_features}));

  return record(op, out, {x, weight, bias}, [x = x.detach(), weight = weight.detach(), rows, in, out_features](
                                                const Tensor& g, const std::vector<bool>& needs) {
    const Tensor g_rows = reshape(g, {rows, out_features});
    Tensor gx, gw, gb;
    if (needs[0]) gx = matmul(g, weight);
    if (needs[1] && needs[2]) {  // in one pass over g where the backend can
      gw = empty({out_features, in}, g.dtype(), g.device());
      gb = empty({out_features}, g.dtype(), g.device());
      backend_for(g.device()).linear_weight_grad(contiguous(g_rows), contiguous(reshape(x, {rows, in})), gw, gb);
    } else if (needs[1]) {
      gw = matmul(transpose(g_rows, 0, 1), reshape(x, {rows, in}));
    } else if (needs[2]) {
      gb = sum(g_rows, {0});
    }
    return std::vector{gx, gw, gb};
  });
}

}  // namespace ellipse
