// Indexing: gather and index_select (a gather with the index broadcast), whose gradients are scatter-adds; topk
// (its indices from a kernel, its values their gather) and argmax (topk's first index); randperm.
#include <numeric>
#include <optional>
#include <utility>

#include "autograd/ops/common.hpp"

namespace ellipse {

namespace {

// Checks what both ops need of x and the index; returns the axis in [0, x.dim()).
int check_indexing(std::string_view op, const Tensor& x, std::int64_t axis, const Tensor& index) {
  detail::check_defined(op, {&x, &index});
  ELLIPSE_CHECK(x.dim() > 0, "{}: cannot index a 0-dimensional tensor", op);
  ELLIPSE_CHECK(index.device() == x.device(), "{}: index is on {}, x on {}", op, index.device().str(),
                x.device().str());
  return normalize_axis(axis, x.dim(), op);
}

// gather on checked operands (index may be a broadcast view); the gradient scatter-adds into zeros of x's shape.
Tensor gather_checked(std::string_view op, const Tensor& x, int axis, const Tensor& index) {
  Tensor out = empty(index.shape(), x.dtype(), x.device());
  backend_for(x.device()).gather(x.detach(), index, axis, out);
  return record(op, out, {x}, [index, axis, shape = x.shape()](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = zeros(shape, g.dtype(), g.device());
    backend_for(g.device()).scatter_add(g, index, axis, gx);
    return std::vector{gx};
  });
}

// The indices of the k largest (smallest) entries of x along `axis`, best first: x's shape with k there (no graph).
Tensor topk_indices(const Tensor& x, std::int64_t k, int axis, bool largest) {
  const auto split = detail::split_at(x.shape(), axis);
  Shape shape = x.shape();
  shape[axis] = k;
  Tensor indices = empty(shape, DType::i64, x.device());
  backend_for(x.device()).topk(contiguous(x.detach()), indices, split.outer, split.n, split.inner, k, largest);
  return indices;
}

// Checks x for topk and argmax; returns the axis in [0, x.dim()).
int check_ranking(std::string_view op, const Tensor& x, std::int64_t axis) {
  detail::check_defined(op, {&x});
  detail::check_floating(op, x);
  ELLIPSE_CHECK(x.dim() > 0, "{}: cannot rank the entries of a 0-dimensional tensor", op);
  return normalize_axis(axis, x.dim(), op);
}

}  // namespace

Tensor gather(const Tensor& x, std::int64_t axis_in, const Tensor& index) {
  const int axis = check_indexing("gather", x, axis_in, index);
  bool fits = index.dim() == x.dim();
  for (int d = 0; d < x.dim() && fits; ++d) fits = d == axis || index.shape()[d] <= x.shape()[d];
  ELLIPSE_CHECK(fits, "gather: index {} does not fit x {}: it needs x's rank and no axis longer than x's but axis {}",
                to_string(index.shape()), to_string(x.shape()), axis);
  detail::check_ids("gather", index, x.shape()[axis], "index", std::nullopt);
  return gather_checked("gather", x, axis, index.detach());
}

Tensor index_select(const Tensor& x, std::int64_t axis_in, const Tensor& index) {
  const int axis = check_indexing("index_select", x, axis_in, index);
  ELLIPSE_CHECK(index.dim() == 1, "index_select: index must be 1-dimensional, got shape {}", to_string(index.shape()));
  detail::check_ids("index_select", index, x.shape()[axis], "index", std::nullopt);
  // The index along the axis, read with stride 0 everywhere else: a gather without a full-size index.
  Shape line(static_cast<std::size_t>(x.dim()), 1), shape = x.shape();
  line[axis] = shape[axis] = index.shape()[0];
  return gather_checked("index_select", x, axis, index.detach().reshape(line).expand(shape));
}

TopK topk(const Tensor& x, std::int64_t k, std::int64_t axis_in, bool largest) {
  const int axis = check_ranking("topk", x, axis_in);
  const std::int64_t n = x.shape()[axis];
  ELLIPSE_CHECK(k >= 0 && k <= n, "topk: k = {} is out of range for axis {} of size {} (shape {})", k, axis, n,
                to_string(x.shape()));
  const Tensor indices = topk_indices(x, k, axis, largest);
  return {.values = gather_checked("topk", x, axis, indices), .indices = indices};
}

Tensor argmax(const Tensor& x, std::int64_t axis_in, bool keepdim) {
  const int axis = check_ranking("argmax", x, axis_in);
  ELLIPSE_CHECK(x.shape()[axis] > 0, "argmax: axis {} of shape {} is empty", axis, to_string(x.shape()));
  const Tensor index = topk_indices(x, 1, axis, true);
  return keepdim ? index : index.squeeze(axis);
}

Tensor randperm(std::int64_t n, Generator& gen, Device device) {
  ELLIPSE_CHECK(n >= 0, "randperm: n must be non-negative, got {}", n);
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  // Fisher-Yates on the host with gen's integers: a seed gives one permutation on every device and platform.
  for (std::int64_t i = n - 1; i > 0; --i)
    std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(gen.integer(i + 1))]);
  return from_vector(order, {n}, device);
}

}  // namespace ellipse
