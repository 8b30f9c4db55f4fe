#pragma once
#include "core/tensor.hpp"

namespace ellipse {

// Reverse-mode sweep from `root` (Tensor::backward calls this). Leaf tensors that require grad get the
// gradient added to their .grad; the graph is freed unless retain_graph.
void run_backward(const Tensor& root, const Tensor& grad, bool retain_graph);

}  // namespace ellipse
