#pragma once
// Helpers shared by the kernels of every backend: dtype dispatch and the coalescing of strided operands.
#include <array>
#include <cstdint>
#include <string_view>

#include "core/tensor.hpp"

namespace ellipse {

// Throws ellipse::Error saying that `op` needs a floating dtype (out of line: CUDA sources avoid fmt).
[[noreturn]] void fail_not_floating(std::string_view op, DType dtype);

// Calls f(T{}) with T the C++ type of a floating dtype.
template <class F>
void dispatch_floating(DType dtype, std::string_view op, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::i64: break;
  }
  fail_not_floating(op, dtype);
}

template <class F>
void dispatch_any(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::i64: f(std::int64_t{}); return;
  }
}

// N operands of one shape with their own strides, with size-1 axes dropped and each axis merged into the
// previous one where every operand is dense across the two. A single element leaves `dims` empty.
template <std::size_t N>
struct Coalesced {
  Shape dims;
  std::array<Strides, N> strides;
};

template <std::size_t N>
Coalesced<N> coalesce(const Shape& shape, const std::array<const Strides*, N>& strides) {
  Coalesced<N> c;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !c.dims.empty();
    for (std::size_t k = 0; k < N && merge; ++k) merge = c.strides[k].back() == (*strides[k])[d] * shape[d];
    if (merge) {
      c.dims.back() *= shape[d];
      for (std::size_t k = 0; k < N; ++k) c.strides[k].back() = (*strides[k])[d];
    } else {
      c.dims.push_back(shape[d]);
      for (std::size_t k = 0; k < N; ++k) c.strides[k].push_back((*strides[k])[d]);
    }
  }
  return c;
}

}  // namespace ellipse
