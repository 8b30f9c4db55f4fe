#pragma once
// Tensor: a cheap handle (one shared_ptr) to a strided view of shared storage, plus autograd state.
// Ops live in autograd/ops.hpp; the member functions below are sugar over them.
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "device.hpp"
#include "dtype.hpp"
#include "shape.hpp"
#include "storage.hpp"

namespace ellipse {

struct Node;
class Tensor;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Strides strides;
  std::int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  // Autograd: a leaf has requires_grad and no grad_fn; an op result has grad_fn when any input required grad.
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<Node> grad_fn;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  const std::shared_ptr<TensorImpl>& impl() const { return impl_; }

  // Metadata.
  const Shape& shape() const { return checked().shape; }
  const Strides& strides() const { return checked().strides; }
  std::int64_t offset() const { return checked().offset; }
  std::int64_t dim() const { return static_cast<std::int64_t>(shape().size()); }
  std::int64_t size(std::int64_t axis) const;
  std::int64_t numel() const { return ellipse::numel(shape()); }
  DType dtype() const { return checked().dtype; }
  Device device() const { return checked().storage->device(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return checked().storage; }

  // Pointer to the first element (offset applied) in the tensor's own memory: a device pointer for a CUDA
  // tensor, which kernels take as is. T must match the dtype. to_vector() copies values to the host.
  template <class T> T* data() const;
  void* raw_data() const;

  // Values, copied to the host. item() requires exactly one element.
  double item() const;
  template <class T> std::vector<T> to_vector() const;

  // Autograd.
  bool requires_grad() const { return checked().requires_grad; }
  Tensor& requires_grad_(bool value = true);
  Tensor grad() const;
  void zero_grad();  // drops .grad, so the next backward starts from zero
  const std::shared_ptr<Node>& grad_fn() const { return checked().grad_fn; }
  bool is_leaf() const { return checked().grad_fn == nullptr; }
  // Backpropagates from this tensor. A scalar needs no gradient; otherwise pass one of the same shape.
  void backward(const Tensor& grad = {}, bool retain_graph = false) const;
  Tensor detach() const;  // shares storage, no history

  // Views (no copy) and copies; see autograd/ops.hpp for the full op set.
  Tensor reshape(const Shape& shape) const;
  Tensor view(const Shape& shape) const;
  Tensor permute(const std::vector<std::int64_t>& order) const;
  Tensor transpose(std::int64_t a, std::int64_t b) const;
  Tensor narrow(std::int64_t axis, std::int64_t start, std::int64_t length) const;
  Tensor slice(std::int64_t axis, std::int64_t start, std::int64_t end, std::int64_t step = 1) const;
  Tensor select(std::int64_t axis, std::int64_t index) const;
  Tensor expand(const Shape& shape) const;
  Tensor unsqueeze(std::int64_t axis) const;
  Tensor squeeze(std::int64_t axis) const;
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;

  // In-place updates for optimizers and initialisers. They refuse tensors that take part in autograd
  // while grad mode is on.
  Tensor& fill_(double value);
  Tensor& copy_(const Tensor& source);
  Tensor& add_(const Tensor& other, double alpha = 1.0);
  Tensor& mul_(double factor);

  std::string str() const;  // shape, dtype, device and (truncated) values

 private:
  const TensorImpl& checked() const;
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& out, const Tensor& tensor);

// Creation. Floating creation defaults to f32 on the CPU.
Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = Device::cpu());
Tensor zeros_like(const Tensor& like);
Tensor ones_like(const Tensor& like);
Tensor full_like(const Tensor& like, double value);
Tensor scalar(double value, DType dtype = DType::f32, Device device = Device::cpu());  // 0-dimensional
// [start, end) in steps of `step`.
Tensor arange(double start, double end, double step = 1.0, DType dtype = DType::f32, Device device = Device::cpu());
// Copies `values` (numel(shape) of them) into a new tensor of dtype_of<T>.
template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device = Device::cpu());
Tensor tensor(std::initializer_list<float> values);  // 1-D f32, for tests and examples

}  // namespace ellipse
