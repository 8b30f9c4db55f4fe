#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ellipse {

using Shape = std::vector<std::int64_t>;
using Strides = std::vector<std::int64_t>;  // in elements, not bytes

std::int64_t numel(const Shape& shape);
Strides contiguous_strides(const Shape& shape);
// Whether a tensor of this shape (non-negative dimensions) can be addressed: its non-zero dimensions multiply to
// at most INT64_MAX / 8, so that its bytes and every contiguous stride fit in int64. A zero dimension empties
// the tensor but does not make the other dimensions harmless: contiguous_strides still multiplies them.
bool addressable(const Shape& shape);
std::string to_string(const Shape& shape);  // "[2, 3]"

// NumPy broadcasting; `op` names the caller in the error message.
Shape broadcast_shapes(const Shape& a, const Shape& b, std::string_view op);

// Maps a possibly negative axis into [0, ndim); throws naming `op` when out of range.
int normalize_axis(std::int64_t axis, std::int64_t ndim, std::string_view op);

}  // namespace ellipse
