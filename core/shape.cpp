#include "core/shape.hpp"

#include <algorithm>
#include <numeric>

#include "core/error.hpp"

namespace ellipse {

std::int64_t numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

Strides contiguous_strides(const Shape& shape) {
  Strides strides(shape.size());
  std::int64_t stride = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

std::optional<std::vector<std::int64_t>> dense_axis_order(const Shape& shape, const Strides& strides) {
  std::vector<std::int64_t> order(shape.size());
  std::iota(order.begin(), order.end(), 0);
  // Larger strides first; size-1 axes, whose strides are arbitrary, count as innermost.
  auto key = [&](std::int64_t axis) { return shape[axis] == 1 ? std::int64_t{0} : strides[axis]; };
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return key(a) > key(b); });
  std::int64_t expected = 1;
  for (std::size_t i = order.size(); i-- > 0;) {
    const std::int64_t axis = order[i];
    if (shape[axis] == 1) continue;
    if (strides[axis] != expected) return std::nullopt;
    expected *= shape[axis];
  }
  return order;
}

bool addressable(const Shape& shape) {
  constexpr std::int64_t limit = INT64_MAX / 8;
  std::int64_t product = 1;
  for (auto d : shape) {
    if (d == 0) continue;
    if (product > limit / d) return false;
    product *= d;
  }
  return true;
}

std::string to_string(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Shape broadcast_shapes(const Shape& a, const Shape& b, std::string_view op) {
  const std::size_t ndim = std::max(a.size(), b.size());
  Shape out(ndim);
  for (std::size_t i = 0; i < ndim; ++i) {
    const std::int64_t da = i < ndim - a.size() ? 1 : a[i - (ndim - a.size())];
    const std::int64_t db = i < ndim - b.size() ? 1 : b[i - (ndim - b.size())];
    ELLIPSE_CHECK(da == db || da == 1 || db == 1, "{}: shapes {} and {} do not broadcast (dimension {}: {} vs {})",
                  op, to_string(a), to_string(b), i, da, db);
    out[i] = da == 1 ? db : da;
  }
  return out;
}

int normalize_axis(std::int64_t axis, std::int64_t ndim, std::string_view op) {
  const std::int64_t bound = std::max<std::int64_t>(ndim, 1);
  ELLIPSE_CHECK(axis >= -bound && axis < bound, "{}: axis {} is out of range for a tensor with {} dimensions", op,
                axis, ndim);
  return static_cast<int>(axis < 0 ? axis + bound : axis);
}

}  // namespace ellipse
