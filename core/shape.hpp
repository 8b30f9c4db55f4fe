#pragma once
#include <cstdint>
#include <optional>
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

// The axes of a strided tensor from outermost to innermost in memory, when its elements fill one block with
// neither gaps nor overlaps (a permuted view of a contiguous tensor, the identity order for a contiguous one);
// nullopt for any other layout. The strides of size-1 axes do not matter.
std::optional<std::vector<std::int64_t>> dense_axis_order(const Shape& shape, const Strides& strides);

// NumPy broadcasting; `op` names the caller in the error message.
Shape broadcast_shapes(const Shape& a, const Shape& b, std::string_view op);

// Maps a possibly negative axis into [0, ndim); throws naming `op` when out of range.
int normalize_axis(std::int64_t axis, std::int64_t ndim, std::string_view op);

}  // namespace ellipse
