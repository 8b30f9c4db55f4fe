#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace ellipse {

// f32 is the working type everywhere; f64 exists on the CPU for gradient checks; i64 holds token ids and labels.
enum class DType : std::uint8_t { f32, f64, i64 };

constexpr std::size_t itemsize(DType dtype) { return dtype == DType::f32 ? 4 : 8; }
constexpr bool is_floating(DType dtype) { return dtype != DType::i64; }

constexpr std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::i64: return "i64";
  }
  return "?";
}

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::i64; }

}  // namespace ellipse
