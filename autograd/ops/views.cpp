// Views and copies: reshape, permute, narrow, slice, select, expand, (un)squeeze, contiguous, clone,
// dtype and device conversion, concat, stack, split, sum_to. Views share storage; their backward rules put the
// gradient back into the input's shape.
#include <numeric>
#include <optional>

#include "autograd/ops/common.hpp"

namespace ellipse {

using detail::make_view;

namespace {

// Strides that let `shape` view memory laid out as (old_shape, old_strides), or nullopt when a copy is
// needed. Groups of old axes that are dense with each other can be re-split freely.
std::optional<Strides> view_strides(const Shape& old_shape, const Strides& old_strides, const Shape& shape) {
  if (numel(shape) == 0 || old_shape.empty()) return contiguous_strides(shape);
  Strides strides(shape.size());
  std::int64_t view_d = static_cast<std::int64_t>(shape.size()) - 1;
  std::int64_t chunk_stride = old_strides.back();
  std::int64_t tensor_numel = 1, view_numel = 1;
  for (std::int64_t d = static_cast<std::int64_t>(old_shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= old_shape[d];
    const bool chunk_ends = d == 0 || (old_shape[d - 1] != 1 && old_strides[d - 1] != tensor_numel * chunk_stride);
    if (!chunk_ends) continue;
    while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
      strides[view_d] = view_numel * chunk_stride;
      view_numel *= shape[view_d];
      --view_d;
    }
    if (view_numel != tensor_numel) return std::nullopt;
    if (d > 0) {
      chunk_stride = old_strides[d - 1];
      tensor_numel = view_numel = 1;
    }
  }
  if (view_d != -1) return std::nullopt;
  return strides;
}

Shape infer_shape(std::string_view op, const Tensor& x, const Shape& requested) {
  Shape shape = requested;
  std::int64_t known = 1;
  int inferred = -1;
  for (int d = 0; d < static_cast<int>(shape.size()); ++d) {
    if (shape[d] == -1) {
      ELLIPSE_CHECK(inferred < 0, "{}: only one dimension of {} may be -1", op, to_string(requested));
      inferred = d;
    } else {
      ELLIPSE_CHECK(shape[d] >= 0, "{}: invalid dimension {} in {}", op, shape[d], to_string(requested));
      known *= shape[d];
    }
  }
  if (inferred >= 0) {
    ELLIPSE_CHECK(known != 0 && x.numel() % known == 0, "{}: cannot reshape {} into {}", op, to_string(x.shape()),
                  to_string(requested));
    shape[inferred] = x.numel() / known;
  }
  ELLIPSE_CHECK(numel(shape) == x.numel(), "{}: cannot reshape {} ({} elements) into {} ({} elements)", op,
                to_string(x.shape()), x.numel(), to_string(requested), numel(shape));
  return shape;
}

Tensor record_view(std::string_view op, const Tensor& x, Tensor view, BackwardFn backward) {
  return record(op, std::move(view), {x}, std::move(backward));
}

// Records a view that picks part of x (make_part(x) == view). Its gradient is the view's gradient written
// into that part of zeros of x's shape; the engine adds it straight into x's gradient instead where it can
// (Node::accumulate), so that several parts of one tensor share one gradient buffer.
template <class MakePart>
Tensor record_part_view(std::string_view op, const Tensor& x, Tensor view, MakePart make_part) {
  Tensor out = record_view(op, x, std::move(view), [shape = x.shape(), make_part](const Tensor& g,
                                                                                  const std::vector<bool>&) {
    Tensor full_grad = zeros(shape, g.dtype(), g.device());
    backend_for(g.device()).copy(g, make_part(full_grad));
    return std::vector{full_grad};
  });
  if (out.grad_fn()) {
    out.grad_fn()->accumulate = [make_part](const Tensor& g, const Tensor& input_grad) {
      make_part(input_grad).add_(g);
    };
    if (auto order = dense_axis_order(x.shape(), x.strides())) out.grad_fn()->input_axis_order = std::move(*order);
  }
  return out;
}

}  // namespace

Tensor view(const Tensor& x, const Shape& requested) {
  detail::check_defined("view", {&x});
  const Shape shape = infer_shape("view", x, requested);
  const auto strides = view_strides(x.shape(), x.strides(), shape);
  ELLIPSE_CHECK(strides.has_value(), "view: a tensor of shape {} with strides {} cannot be viewed as {} without a "
                "copy; use reshape", to_string(x.shape()), to_string(x.strides()), to_string(shape));
  const Shape old = x.shape();
  return record_view("view", x, make_view(x, shape, *strides, x.offset()),
                     [old](const Tensor& g, const std::vector<bool>&) { return std::vector{reshape(g, old)}; });
}

Tensor reshape(const Tensor& x, const Shape& requested) {
  detail::check_defined("reshape", {&x});
  const Shape shape = infer_shape("reshape", x, requested);
  if (view_strides(x.shape(), x.strides(), shape)) return view(x, shape);
  return view(contiguous(x), shape);
}

Tensor permute(const Tensor& x, const std::vector<std::int64_t>& order) {
  detail::check_defined("permute", {&x});
  ELLIPSE_CHECK(static_cast<std::int64_t>(order.size()) == x.dim(), "permute: order {} has {} entries for a tensor "
                "of shape {}", order, order.size(), to_string(x.shape()));
  Shape shape(order.size());
  Strides strides(order.size());
  std::vector<std::int64_t> inverse(order.size(), -1);
  for (std::size_t i = 0; i < order.size(); ++i) {
    const int axis = normalize_axis(order[i], x.dim(), "permute");
    ELLIPSE_CHECK(inverse[axis] < 0, "permute: {} is not a permutation of the axes of {}", order, to_string(x.shape()));
    inverse[axis] = static_cast<std::int64_t>(i);
    shape[i] = x.shape()[axis];
    strides[i] = x.strides()[axis];
  }
  return record_view("permute", x, make_view(x, shape, strides, x.offset()),
                     [inverse](const Tensor& g, const std::vector<bool>&) { return std::vector{permute(g, inverse)}; });
}

Tensor transpose(const Tensor& x, std::int64_t a, std::int64_t b) {
  detail::check_defined("transpose", {&x});
  // (normalize_axis accepts axis 0 of a 0-d tensor, which has no entry in `order` to swap.)
  ELLIPSE_CHECK(x.dim() > 0, "transpose: cannot transpose a 0-dimensional tensor");
  std::vector<std::int64_t> order(static_cast<std::size_t>(x.dim()));
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[normalize_axis(a, x.dim(), "transpose")], order[normalize_axis(b, x.dim(), "transpose")]);
  return permute(x, order);
}

Tensor slice(const Tensor& x, std::int64_t axis_in, std::int64_t start, std::int64_t end, std::int64_t step) {
  detail::check_defined("slice", {&x});
  ELLIPSE_CHECK(x.dim() > 0, "slice: cannot slice a 0-dimensional tensor");
  const int axis = normalize_axis(axis_in, x.dim(), "slice");
  const std::int64_t size = x.shape()[axis];
  if (start < 0) start += size;
  if (end < 0) end += size;
  ELLIPSE_CHECK(step >= 1, "slice: step must be at least 1, got {}", step);
  ELLIPSE_CHECK(0 <= start && start <= end && end <= size, "slice: [{}, {}) is not a range within axis {} of size {} "
                "(shape {})", start, end, axis, size, to_string(x.shape()));
  Shape shape = x.shape();
  Strides strides = x.strides();
  shape[axis] = (end - start + step - 1) / step;
  strides[axis] *= step;
  const std::int64_t offset = x.offset() + start * x.strides()[axis];
  return record_part_view("slice", x, make_view(x, shape, strides, offset),
                          [axis, start, end, step](const Tensor& full) { return slice(full, axis, start, end, step); });
}

Tensor narrow(const Tensor& x, std::int64_t axis, std::int64_t start, std::int64_t length) {
  detail::check_defined("narrow", {&x});
  ELLIPSE_CHECK(x.dim() > 0, "narrow: cannot narrow a 0-dimensional tensor");
  const std::int64_t size = x.shape()[normalize_axis(axis, x.dim(), "narrow")];
  if (start < 0) start += size;  // from the end, as in PyTorch
  // Checked here so that errors name narrow and its arguments rather than the slice it becomes.
  ELLIPSE_CHECK(length >= 0 && start >= 0 && start + length <= size,
                "narrow: start {} and length {} do not fit axis {} of size {} (shape {})", start, length, axis, size,
                to_string(x.shape()));
  return slice(x, axis, start, start + length);
}

Tensor select(const Tensor& x, std::int64_t axis_in, std::int64_t index) {
  detail::check_defined("select", {&x});
  ELLIPSE_CHECK(x.dim() > 0, "select: cannot select from a 0-dimensional tensor");
  const int axis = normalize_axis(axis_in, x.dim(), "select");
  const std::int64_t size = x.shape()[axis];
  ELLIPSE_CHECK(index >= -size && index < size, "select: index {} is out of range for axis {} of size {} (shape {})",
                index, axis, size, to_string(x.shape()));
  if (index < 0) index += size;
  return squeeze(slice(x, axis, index, index + 1), axis);
}

Tensor expand(const Tensor& x, const Shape& requested) {
  detail::check_defined("expand", {&x});
  const auto nd = static_cast<std::int64_t>(requested.size());
  ELLIPSE_CHECK(nd >= x.dim(), "expand: cannot expand {} to fewer dimensions {}", to_string(x.shape()),
                to_string(requested));
  Shape shape(requested.size());
  Strides strides(requested.size(), 0);
  for (std::int64_t d = 0; d < nd; ++d) {
    const std::int64_t xd = d - (nd - x.dim());
    const std::int64_t have = xd >= 0 ? x.shape()[xd] : 1;
    const std::int64_t want = requested[d] == -1 ? have : requested[d];
    ELLIPSE_CHECK(have == want || have == 1, "expand: cannot expand {} to {} (dimension {}: {} vs {})",
                  to_string(x.shape()), to_string(requested), d, have, want);
    shape[d] = want;
    strides[d] = xd >= 0 && have == want ? x.strides()[xd] : 0;
  }
  if (shape == x.shape()) return x;
  const Shape old = x.shape();
  return record_view("expand", x, make_view(x, shape, strides, x.offset()),
                     [old](const Tensor& g, const std::vector<bool>&) { return std::vector{sum_to(g, old)}; });
}

Tensor unsqueeze(const Tensor& x, std::int64_t axis_in) {
  detail::check_defined("unsqueeze", {&x});
  ELLIPSE_CHECK(axis_in >= -(x.dim() + 1) && axis_in <= x.dim(), "unsqueeze: axis {} is out of range for shape {}",
                axis_in, to_string(x.shape()));
  const auto axis = static_cast<std::size_t>(axis_in < 0 ? axis_in + x.dim() + 1 : axis_in);
  Shape shape = x.shape();
  Strides strides = x.strides();
  const std::int64_t stride = axis < shape.size() ? shape[axis] * strides[axis] : 1;
  shape.insert(shape.begin() + static_cast<std::ptrdiff_t>(axis), 1);
  strides.insert(strides.begin() + static_cast<std::ptrdiff_t>(axis), stride);
  const Shape old = x.shape();
  return record_view("unsqueeze", x, make_view(x, shape, strides, x.offset()),
                     [old](const Tensor& g, const std::vector<bool>&) { return std::vector{reshape(g, old)}; });
}

Tensor squeeze(const Tensor& x, std::int64_t axis_in) {
  detail::check_defined("squeeze", {&x});
  const int axis = normalize_axis(axis_in, x.dim(), "squeeze");
  ELLIPSE_CHECK(x.dim() > 0 && x.shape()[axis] == 1, "squeeze: axis {} of shape {} has size {}, not 1", axis,
                to_string(x.shape()), x.dim() > 0 ? x.shape()[axis] : 0);
  Shape shape = x.shape();
  Strides strides = x.strides();
  shape.erase(shape.begin() + axis);
  strides.erase(strides.begin() + axis);
  const Shape old = x.shape();
  return record_view("squeeze", x, make_view(x, shape, strides, x.offset()),
                     [old](const Tensor& g, const std::vector<bool>&) { return std::vector{reshape(g, old)}; });
}

Tensor clone(const Tensor& x) {
  detail::check_defined("clone", {&x});
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  backend_for(x.device()).copy(x, out);
  return record("clone", out, {x}, [](const Tensor& g, const std::vector<bool>&) { return std::vector{g}; });
}

Tensor contiguous(const Tensor& x) {
  detail::check_defined("contiguous", {&x});
  return x.is_contiguous() ? x : clone(x);
}

Tensor to_dtype(const Tensor& x, DType dtype) {
  detail::check_defined("to", {&x});
  if (x.dtype() == dtype) return x;
  Tensor out = empty(x.shape(), dtype, x.device());
  backend_for(x.device()).copy(x, out);
  if (!is_floating(dtype)) return out;  // integers carry no gradient
  const DType from = x.dtype();
  return record("to_dtype", out, {x},
                [from](const Tensor& g, const std::vector<bool>&) { return std::vector{to_dtype(g, from)}; });
}

Tensor to_device(const Tensor& x, Device device) {
  detail::check_defined("to", {&x});
  if (x.device() == device) return x;
  Backend& target = backend_for(device);  // throws first when the target backend is missing
  const Tensor source = contiguous(x);
  std::vector<char> host(static_cast<std::size_t>(source.numel()) * itemsize(x.dtype()));
  backend_for(x.device()).copy_to_host(host.data(), source.raw_data(), host.size());
  Tensor out = empty(x.shape(), x.dtype(), device);
  target.copy_from_host(out.raw_data(), host.data(), host.size());
  const Device from = x.device();
  return record("to_device", out, {x},
                [from](const Tensor& g, const std::vector<bool>&) { return std::vector{to_device(g, from)}; });
}

Tensor concat(const std::vector<Tensor>& xs, std::int64_t axis_in) {
  ELLIPSE_CHECK(!xs.empty(), "concat: needs at least one tensor");
  for (const auto& x : xs) detail::same_device_and_dtype("concat", {&xs[0], &x});
  ELLIPSE_CHECK(xs[0].dim() > 0, "concat: cannot concatenate 0-dimensional tensors; unsqueeze them first");
  const int axis = normalize_axis(axis_in, xs[0].dim(), "concat");
  Shape shape = xs[0].shape();
  shape[axis] = 0;
  std::vector<std::int64_t> sizes;
  for (const auto& x : xs) {
    Shape expected = xs[0].shape();
    expected[axis] = x.dim() == xs[0].dim() ? x.shape()[axis] : -1;
    ELLIPSE_CHECK(x.shape() == expected, "concat: shape {} does not match {} outside axis {}", to_string(x.shape()),
                  to_string(xs[0].shape()), axis);
    sizes.push_back(x.shape()[axis]);
    shape[axis] += x.shape()[axis];
  }
  Tensor out = empty(shape, xs[0].dtype(), xs[0].device());
  std::int64_t start = 0;
  for (const auto& x : xs) {
    backend_for(out.device()).copy(x, narrow(out, axis, start, x.shape()[axis]));
    start += x.shape()[axis];
  }
  return record("concat", out, xs, [sizes, axis](const Tensor& g, const std::vector<bool>&) {
    return split(g, sizes, axis);
  });
}

Tensor stack(const std::vector<Tensor>& xs, std::int64_t axis) {
  ELLIPSE_CHECK(!xs.empty(), "stack: needs at least one tensor");
  for (const auto& x : xs) detail::same_device_and_dtype("stack", {&xs[0], &x});
  const std::int64_t dim = xs[0].dim();
  ELLIPSE_CHECK(axis >= -(dim + 1) && axis <= dim,
                "stack: axis {} is out of range for a new axis of {} (from {} to {})", axis, to_string(xs[0].shape()),
                -(dim + 1), dim);
  std::vector<Tensor> parts;
  for (const auto& x : xs) {
    ELLIPSE_CHECK(x.shape() == xs[0].shape(), "stack: shape {} does not match {}; stacked tensors need one shape",
                  to_string(x.shape()), to_string(xs[0].shape()));
    parts.push_back(unsqueeze(x, axis));
  }
  return concat(parts, axis);  // axis counts the same in the unsqueezed parts, from either end
}

std::vector<Tensor> split(const Tensor& x, const std::vector<std::int64_t>& sizes, std::int64_t axis_in) {
  detail::check_defined("split", {&x});
  ELLIPSE_CHECK(x.dim() > 0, "split: cannot split a 0-dimensional tensor");
  const int axis = normalize_axis(axis_in, x.dim(), "split");
  std::int64_t total = 0;
  for (auto s : sizes) {
    ELLIPSE_CHECK(s >= 0, "split: negative size {} in {}", s, sizes);
    total += s;
  }
  ELLIPSE_CHECK(total == x.shape()[axis], "split: sizes {} add up to {}, but axis {} of shape {} has {}", sizes, total,
                axis, to_string(x.shape()), x.shape()[axis]);
  std::vector<Tensor> parts;
  std::int64_t start = 0;
  for (auto s : sizes) {
    parts.push_back(narrow(x, axis, start, s));
    start += s;
  }
  return parts;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  detail::check_defined("sum_to", {&x});
  if (x.shape() == shape) return x;
  const std::int64_t lead = x.dim() - static_cast<std::int64_t>(shape.size());
  ELLIPSE_CHECK(lead >= 0, "sum_to: cannot sum {} down to {}", to_string(x.shape()), to_string(shape));
  std::vector<std::int64_t> axes;
  for (std::int64_t d = 0; d < x.dim(); ++d) {
    const bool leading = d < lead;
    ELLIPSE_CHECK(leading || shape[d - lead] == x.shape()[d] || shape[d - lead] == 1,
                  "sum_to: cannot sum {} down to {}", to_string(x.shape()), to_string(shape));
    if (leading || (shape[d - lead] == 1 && x.shape()[d] != 1)) axes.push_back(d);
  }
  if (axes.empty()) return reshape(x, shape);
  return reshape(sum(x, axes, true), shape);
}

}  // namespace ellipse
