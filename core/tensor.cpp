#include "core/tensor.hpp"

#include <cmath>

#include "autograd/engine.hpp"
#include "autograd/grad_mode.hpp"
#include "autograd/node.hpp"
#include "autograd/ops.hpp"
#include "backends/backend.hpp"
#include "core/error.hpp"

namespace ellipse {

const TensorImpl& Tensor::checked() const {
  ELLIPSE_CHECK(impl_ != nullptr, "Tensor: this tensor is undefined (default-constructed or moved from)");
  return *impl_;
}

std::int64_t Tensor::size(std::int64_t axis) const {
  // (normalize_axis accepts axis 0 of a 0-d tensor, which has no size to return.)
  ELLIPSE_CHECK(dim() > 0, "size: a 0-dimensional tensor has no axis {}", axis);
  return shape()[normalize_axis(axis, dim(), "size")];
}

bool Tensor::is_contiguous() const {
  std::int64_t expected = 1;
  for (std::size_t i = shape().size(); i-- > 0;) {
    if (shape()[i] == 1) continue;  // the stride of a size-1 axis never matters
    if (strides()[i] != expected) return false;
    expected *= shape()[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  return static_cast<char*>(storage()->data()) + offset() * static_cast<std::int64_t>(itemsize(dtype()));
}

template <class T>
T* Tensor::data() const {
  ELLIPSE_CHECK(dtype() == dtype_of<T>(), "Tensor::data: the tensor holds {}, not {}", dtype_name(dtype()),
                dtype_name(dtype_of<T>()));
  return static_cast<T*>(raw_data());
}
template float* Tensor::data<float>() const;
template double* Tensor::data<double>() const;
template std::int64_t* Tensor::data<std::int64_t>() const;

template <class T>
std::vector<T> Tensor::to_vector() const {
  const Tensor host = to(Device::cpu()).to(dtype_of<T>()).contiguous();
  const T* p = host.data<T>();
  return std::vector<T>(p, p + host.numel());
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<std::int64_t> Tensor::to_vector<std::int64_t>() const;

double Tensor::item() const {
  ELLIPSE_CHECK(numel() == 1, "item: expected a tensor with one element, got shape {}", to_string(shape()));
  return to_vector<double>()[0];
}

Tensor& Tensor::requires_grad_(bool value) {
  ELLIPSE_CHECK(!value || is_floating(dtype()), "requires_grad_: only floating tensors can require grad, got {}",
                dtype_name(dtype()));
  ELLIPSE_CHECK(is_leaf(), "requires_grad_: only leaf tensors can change requires_grad (this one came from '{}'); "
                "use detach()", grad_fn()->op);
  impl_->requires_grad = value;
  return *this;
}

Tensor Tensor::grad() const { return Tensor(checked().grad); }
void Tensor::zero_grad() { impl_->grad.reset(); }

void Tensor::backward(const Tensor& grad, bool retain_graph) const { run_backward(*this, grad, retain_graph); }

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>(checked());
  impl->requires_grad = false;
  impl->grad.reset();
  impl->grad_fn.reset();
  return Tensor(std::move(impl));
}

Tensor Tensor::reshape(const Shape& s) const { return ellipse::reshape(*this, s); }
Tensor Tensor::view(const Shape& s) const { return ellipse::view(*this, s); }
Tensor Tensor::permute(const std::vector<std::int64_t>& order) const { return ellipse::permute(*this, order); }
Tensor Tensor::transpose(std::int64_t a, std::int64_t b) const { return ellipse::transpose(*this, a, b); }
Tensor Tensor::narrow(std::int64_t axis, std::int64_t start, std::int64_t length) const {
  return ellipse::narrow(*this, axis, start, length);
}
Tensor Tensor::slice(std::int64_t axis, std::int64_t start, std::int64_t end, std::int64_t step) const {
  return ellipse::slice(*this, axis, start, end, step);
}
Tensor Tensor::select(std::int64_t axis, std::int64_t index) const { return ellipse::select(*this, axis, index); }
Tensor Tensor::expand(const Shape& s) const { return ellipse::expand(*this, s); }
Tensor Tensor::unsqueeze(std::int64_t axis) const { return ellipse::unsqueeze(*this, axis); }
Tensor Tensor::squeeze(std::int64_t axis) const { return ellipse::squeeze(*this, axis); }
Tensor Tensor::contiguous() const { return ellipse::contiguous(*this); }
Tensor Tensor::clone() const { return ellipse::clone(*this); }
Tensor Tensor::to(DType d) const { return ellipse::to_dtype(*this, d); }
Tensor Tensor::to(Device d) const { return ellipse::to_device(*this, d); }

namespace {
void check_in_place(const Tensor& t, std::string_view op) {
  ELLIPSE_CHECK(!(grad_enabled() && (t.requires_grad() || t.grad_fn())),
                "{}: in-place update of a tensor of shape {} that takes part in autograd; do it with grad mode off "
                "(NoGradGuard; ellipse.no_grad() in Python)", op, to_string(t.shape()));
}
}  // namespace

Tensor& Tensor::fill_(double value) {
  check_in_place(*this, "fill_");
  backend_for(device()).fill(*this, value);
  return *this;
}

Tensor& Tensor::copy_(const Tensor& source) {
  check_in_place(*this, "copy_");
  ELLIPSE_CHECK(source.shape() == shape(), "copy_: source shape {} differs from destination shape {}",
                to_string(source.shape()), to_string(shape()));
  ELLIPSE_CHECK(source.device() == device(), "copy_: source is on {}, destination on {}", source.device().str(),
                device().str());
  backend_for(device()).copy(source, *this);
  return *this;
}

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  check_in_place(*this, "add_");
  NoGradGuard no_grad;
  const Tensor scaled = alpha == 1.0 ? other : mul(other, alpha);
  ELLIPSE_CHECK(broadcast_shapes(shape(), scaled.shape(), "add_") == shape(),
                "add_: cannot broadcast {} into the destination's shape {}", to_string(other.shape()),
                to_string(shape()));
  ELLIPSE_CHECK(other.device() == device(), "add_: other is on {}, destination on {}", other.device().str(),
                device().str());
  backend_for(device()).binary(BinaryOp::add, *this, scaled.expand(shape()), *this);
  return *this;
}

Tensor& Tensor::mul_(double factor) {
  check_in_place(*this, "mul_");
  backend_for(device()).unary(UnaryOp::mul_scalar, *this, *this, factor);
  return *this;
}

// ---- creation ----

Tensor empty(const Shape& shape, DType dtype, Device device) {
  for (auto d : shape) ELLIPSE_CHECK(d >= 0, "empty: negative dimension in shape {}", to_string(shape));
  // Guard against absurd shapes before multiplying sizes (or strides) into an overflow.
  if (!addressable(shape)) {
    long double bytes = static_cast<long double>(itemsize(dtype));
    for (auto e : shape) bytes *= static_cast<long double>(e == 0 ? 1 : e);
    fail("empty: shape {} of {} has dimensions whose product needs {:.3g} bytes, more than can be addressed",
         to_string(shape), dtype_name(dtype), static_cast<double>(bytes));
  }
  const std::int64_t n = numel(shape);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = backend_for(device).allocate(static_cast<std::size_t>(n) * itemsize(dtype));
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  backend_for(device).fill(t, value);
  return t;
}
Tensor zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }
Tensor zeros_like(const Tensor& like) { return zeros(like.shape(), like.dtype(), like.device()); }
Tensor ones_like(const Tensor& like) { return ones(like.shape(), like.dtype(), like.device()); }
Tensor full_like(const Tensor& like, double value) { return full(like.shape(), value, like.dtype(), like.device()); }
Tensor scalar(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor arange(double start, double end, double step, DType dtype, Device device) {
  ELLIPSE_CHECK(step != 0, "arange: step must be non-zero");
  const double count = std::ceil((end - start) / step);
  ELLIPSE_CHECK(count < 1e12, "arange: [{}, {}) in steps of {} has too many elements", start, end, step);
  Tensor t = empty({std::max<std::int64_t>(0, static_cast<std::int64_t>(count))}, dtype, device);
  backend_for(device).arange(t, start, step);
  return t;
}

template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  ELLIPSE_CHECK(static_cast<std::int64_t>(values.size()) == numel(shape),
                "from_vector: {} values do not fill shape {} ({} elements)", values.size(), to_string(shape),
                numel(shape));
  Tensor t = empty(shape, dtype_of<T>(), device);
  backend_for(device).copy_from_host(t.raw_data(), values.data(), values.size() * sizeof(T));
  return t;
}
template Tensor from_vector<float>(const std::vector<float>&, const Shape&, Device);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&, Device);
template Tensor from_vector<std::int64_t>(const std::vector<std::int64_t>&, const Shape&, Device);

Tensor tensor(std::initializer_list<float> values) {
  return from_vector(std::vector<float>(values), {static_cast<std::int64_t>(values.size())});
}

}  // namespace ellipse
