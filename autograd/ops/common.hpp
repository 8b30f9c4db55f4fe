#pragma once
// Validation helpers shared by the op definitions in this folder.
#include <initializer_list>
#include <optional>
#include <string_view>

#include "autograd/grad_mode.hpp"
#include "autograd/node.hpp"
#include "autograd/ops.hpp"
#include "backends/backend.hpp"
#include "core/error.hpp"

namespace ellipse::detail {

inline void check_defined(std::string_view op, std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) ELLIPSE_CHECK(t->defined(), "{}: an input tensor is undefined", op);
}

// All inputs on one device, with one dtype; returns that device's backend.
inline Backend& same_device_and_dtype(std::string_view op, std::initializer_list<const Tensor*> tensors) {
  check_defined(op, tensors);
  const Tensor& first = **tensors.begin();
  for (const Tensor* t : tensors) {
    ELLIPSE_CHECK(t->device() == first.device(),
                  "{}: inputs are on different devices ({} {} and {} {}); move them with .to()", op,
                  to_string(first.shape()), first.device().str(), to_string(t->shape()), t->device().str());
    ELLIPSE_CHECK(t->dtype() == first.dtype(), "{}: inputs have different dtypes ({} {} and {} {}); convert with .to()",
                  op, to_string(first.shape()), dtype_name(first.dtype()), to_string(t->shape()),
                  dtype_name(t->dtype()));
  }
  return backend_for(first.device());
}

inline void check_floating(std::string_view op, const Tensor& t) {
  ELLIPSE_CHECK(is_floating(t.dtype()), "{}: expected a floating tensor (f32 or f64), got {} of shape {}", op,
                dtype_name(t.dtype()), to_string(t.shape()));
}

// Checks on the host that every id lies in [0, bound) or equals `allowed` (if given); returns how many
// differ from `allowed` (an ignore_index may also be a valid class: those entries still count as ignored).
inline std::int64_t check_ids(std::string_view op, const Tensor& ids, std::int64_t bound, std::string_view what,
                              std::optional<std::int64_t> allowed) {
  ELLIPSE_CHECK(ids.dtype() == DType::i64, "{}: {} must be i64, got {} of shape {}", op, what, dtype_name(ids.dtype()),
                to_string(ids.shape()));
  const Tensor host = ids.to(Device::cpu()).contiguous();
  const std::int64_t* p = host.data<std::int64_t>();
  std::int64_t counted = 0;
  for (std::int64_t i = 0; i < host.numel(); ++i) {
    const bool is_allowed = p[i] == allowed;
    ELLIPSE_CHECK((p[i] >= 0 && p[i] < bound) || is_allowed, "{}: {} {} at position {} is out of range [0, {})", op,
                  what, p[i], i, bound);
    counted += !is_allowed;
  }
  return counted;
}

// A tensor sharing x's storage with the given geometry (no copy, no graph).
inline Tensor make_view(const Tensor& x, Shape shape, Strides strides, std::int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = x.storage();
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = x.dtype();
  return Tensor(std::move(impl));
}

// Uninitialised memory for a tensor of `shape` laid out with its axes in `order`, outermost first (a permutation,
// as dense_axis_order gives; row-major when empty). A gradient made in the layout of the tensor it belongs to
// keeps the views between it and the op that made that tensor free of copies.
inline Tensor empty_in_order(const Shape& shape, const std::vector<std::int64_t>& order, DType dtype, Device device) {
  if (order.empty()) return empty(shape, dtype, device);
  Shape stored(order.size());
  for (std::size_t i = 0; i < order.size(); ++i) stored[i] = shape[order[i]];
  const Tensor memory = empty(stored, dtype, device);
  const Strides stored_strides = contiguous_strides(stored);
  Strides strides(order.size());
  for (std::size_t i = 0; i < order.size(); ++i) strides[order[i]] = stored_strides[i];
  return make_view(memory, shape, std::move(strides), 0);
}

// x viewed as [outer, n, inner] around `axis`.
struct AxisSplit {
  std::int64_t outer = 1, n = 1, inner = 1;
};
inline AxisSplit split_at(const Shape& shape, int axis) {
  AxisSplit s;
  for (int d = 0; d < static_cast<int>(shape.size()); ++d) {
    if (d < axis) s.outer *= shape[d];
    else if (d == axis) s.n = shape[d];
    else s.inner *= shape[d];
  }
  return s;
}

}  // namespace ellipse::detail
