#pragma once
// The argument checks that every communicator makes before a collective (internal: not installed), so that each
// communicator refuses the same arguments with the same message.
#include <string_view>

#include "core/tensor.hpp"
#include "dist/communicator.hpp"

namespace ellipse::dist::detail {

// t must be defined and contiguous.
void check_contiguous(std::string_view collective, const Tensor& t);
// t contiguous, and of a floating dtype to be averaged.
void check_all_reduce(const Tensor& t, Reduction reduction);
// t contiguous, and root one of the `size` ranks.
void check_broadcast(const Tensor& t, int root, int size);

}  // namespace ellipse::dist::detail
