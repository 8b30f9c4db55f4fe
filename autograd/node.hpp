#pragma once
// A node of the dynamic graph: made by an op when one of its inputs requires grad, owned by the op's result.
#include <functional>
#include <string_view>
#include <vector>

#include "../core/tensor.hpp"

namespace ellipse {

// Given the gradient of the op's output, returns one gradient per input (in input order; an undefined
// Tensor where there is none). needs_grad[i] says whether input i wants one, so rules can skip work.
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output, const std::vector<bool>& needs_grad)>;

// For a view that picks part of its one input (slice): adds grad_output into that part of input_grad, the
// input's whole gradient, in place. Lets the engine give the parts of one tensor (q, k and v of one qkv
// output) one gradient buffer instead of a zero-filled full-size gradient each that are then summed.
using AccumulateFn = std::function<void(const Tensor& grad_output, const Tensor& input_grad)>;

struct Node;

// Where one input's gradient goes. It holds the input's producing node, or the input itself only where it
// is a leaf that requires grad (whose .grad accumulates), never an intermediate result: activations that
// no backward rule saved are freed as soon as the forward drops them.
struct Edge {
  std::shared_ptr<Node> node;         // the op that produced the input, for a non-leaf that requires grad
  std::shared_ptr<TensorImpl> leaf;   // the input, for a leaf that requires grad
  Shape shape;                        // the input's, which its gradient must have
  DType dtype = DType::f32;
  Device device;

  bool requires_grad() const { return node != nullptr || leaf != nullptr; }
};

struct Node {
  std::string_view op;          // the op's name, for error messages and anomaly reports
  std::vector<Edge> inputs;     // one per input of the op, in order; cleared once backward has run through it
  BackwardFn backward;          // empty once the graph has been freed; owns what the rule saved
  AccumulateFn accumulate;      // optional; backward must give the same result (it serves leaves and anomaly mode)
  // With accumulate: the input's axes from outermost to innermost in memory, which the gradient buffer copies
  // so that the views between it and the op that made the input stay views (q, k and v of a qkv output
  // gather back into that output's layout). Empty: row-major.
  std::vector<std::int64_t> input_axis_order;
  ~Node();                      // frees the graph behind it iteratively (see engine.cpp)
};

// Wraps an op's freshly computed output: records a Node when grad mode is on and any input requires grad.
// Backward rules must capture only detached tensors (see Tensor::detach) so that no cycle keeps the
// graph alive, and only those their rule reads: what a rule captures lives until backward has run it.
Tensor record(std::string_view op, Tensor output, std::vector<Tensor> inputs, BackwardFn backward);

}  // namespace ellipse
