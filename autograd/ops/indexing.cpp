// Indexing: gather and index_select (a gather with the index broadcast), whose gradients are scatter-adds.
#include <optional>

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

}  // namespace ellipse
