// Reductions (sum, mean, max over axes, with keepdim) and cumsum.
#include <algorithm>
#include <set>

#include "autograd/ops/common.hpp"

namespace ellipse {

namespace {

// The sorted, distinct, non-negative axes to reduce; all axes when `axes` is empty.
std::vector<int> reduction_axes(std::string_view op, const Tensor& x, const std::vector<std::int64_t>& axes) {
  std::set<int> unique;
  for (auto a : axes) {
    const int axis = normalize_axis(a, x.dim(), op);
    ELLIPSE_CHECK(unique.insert(axis).second, "{}: axis {} appears twice in {}", op, axis, axes);
  }
  // A 0-d tensor accepts axis 0 (normalize_axis allows it, as PyTorch does) but has no axis to reduce.
  if (x.dim() == 0) return {};
  if (axes.empty())
    for (int d = 0; d < x.dim(); ++d) unique.insert(d);
  return {unique.begin(), unique.end()};
}

Shape keepdim_shape(const Shape& shape, const std::vector<int>& axes) {
  Shape out = shape;
  for (int a : axes) out[a] = 1;
  return out;
}

// A fresh contiguous tensor seen with another shape of the same size (no graph).
Tensor contiguous_view(const Tensor& t, const Shape& shape) {
  return detail::make_view(t, shape, contiguous_strides(shape), t.offset());
}

Shape dropped_shape(const Shape& shape, const std::vector<int>& axes) {
  Shape out;
  for (int d = 0; d < static_cast<int>(shape.size()); ++d)
    if (!std::binary_search(axes.begin(), axes.end(), d)) out.push_back(shape[d]);
  return out;
}

// Reduces x over `axes` to keepdim shape, one run of adjacent axes per kernel call (no graph).
Tensor reduce_kernel(std::string_view op, ReduceOp kind, const Tensor& x, const std::vector<int>& axes) {
  detail::check_floating(op, x);
  // Nothing to reduce (a 0-d input): still a fresh tensor, never a view of x's storage.
  if (axes.empty()) return clone(x.detach());
  Backend& backend = backend_for(x.device());
  Tensor current = contiguous(x.detach());
  for (std::size_t end = axes.size(); end > 0;) {  // runs from the last axis backwards
    std::size_t begin = end - 1;
    while (begin > 0 && axes[begin - 1] == axes[begin] - 1) --begin;
    const int first = axes[begin], last = axes[end - 1];
    std::int64_t outer = 1, n = 1, inner = 1;
    for (int d = 0; d < current.dim(); ++d) {
      (d < first ? outer : d <= last ? n : inner) *= current.shape()[d];
    }
    ELLIPSE_CHECK(kind != ReduceOp::max || n > 0, "{}: cannot reduce an empty axis of shape {}", op,
                  to_string(x.shape()));
    Shape shape = current.shape();
    for (int d = first; d <= last; ++d) shape[d] = 1;
    Tensor out = empty(shape, x.dtype(), x.device());
    backend.reduce(kind, current, out, outer, n, inner);
    current = out;
    end = begin;
  }
  return current;
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<std::int64_t>& axes_in, bool keepdim) {
  detail::check_defined("sum", {&x});
  const auto axes = reduction_axes("sum", x, axes_in);
  Tensor out = reduce_kernel("sum", ReduceOp::sum, x, axes);
  if (!keepdim) out = contiguous_view(out, dropped_shape(x.shape(), axes));
  return record("sum", out, {x}, [shape = x.shape(), axes](const Tensor& g, const std::vector<bool>&) {
    return std::vector{expand(reshape(g, keepdim_shape(shape, axes)), shape)};
  });
}

Tensor mean(const Tensor& x, const std::vector<std::int64_t>& axes_in, bool keepdim) {
  detail::check_defined("mean", {&x});
  std::int64_t count = 1;
  for (int a : reduction_axes("mean", x, axes_in)) count *= x.shape()[a];
  return mul(sum(x, axes_in, keepdim), 1.0 / static_cast<double>(count));
}

Tensor max(const Tensor& x, const std::vector<std::int64_t>& axes_in, bool keepdim) {
  detail::check_defined("max", {&x});
  const auto axes = reduction_axes("max", x, axes_in);
  const Tensor kept = reduce_kernel("max", ReduceOp::max, x, axes);
  const Tensor out = keepdim ? kept : contiguous_view(kept, dropped_shape(x.shape(), axes));
  return record("max", out, {x}, [x = x.detach(), kept = kept.detach(), axes](const Tensor& g, const std::vector<bool>&) {
    // The gradient goes to the maxima, split equally between ties.
    std::vector<std::int64_t> axes64(axes.begin(), axes.end());
    const Tensor is_max = equal(x, kept);
    const Tensor share = div(reshape(g, kept.shape()), sum(is_max, axes64, true));
    return std::vector{mul(is_max, share)};
  });
}

Tensor cumsum(const Tensor& x, std::int64_t axis_in) {
  detail::check_defined("cumsum", {&x});
  detail::check_floating("cumsum", x);
  const int axis = normalize_axis(axis_in, x.dim(), "cumsum");
  const auto split = detail::split_at(x.shape(), x.dim() == 0 ? -1 : axis);
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  backend_for(x.device()).cumsum(contiguous(x.detach()), out, split.outer, split.n, split.inner, false);
  return record("cumsum", out, {x}, [split](const Tensor& g, const std::vector<bool>&) {
    // d/dx_j of sum_{i >= j}: the reversed prefix sum of the gradient.
    Tensor gx = empty(g.shape(), g.dtype(), g.device());
    backend_for(g.device()).cumsum(contiguous(g), gx, split.outer, split.n, split.inner, true);
    return std::vector{gx};
  });
}

}  // namespace ellipse
