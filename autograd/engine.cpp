#include "autograd/engine.hpp"

#include <cmath>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "autograd/grad_mode.hpp"
#include "autograd/node.hpp"
#include "autograd/ops.hpp"
#include "autograd/ops/common.hpp"
#include "core/error.hpp"

namespace ellipse {

namespace {
thread_local bool grad_mode_enabled = true;
thread_local bool anomaly_mode_enabled = false;

// What non-finite values a tensor holds (integer tensors hold none).
struct NonFinite {
  bool nan = false, inf = false;
};

template <class T>
NonFinite scan_host(const Tensor& t) {
  NonFinite found;
  const T* base = t.data<T>();
  const Shape& shape = t.shape();
  const Strides& strides = t.strides();
  // An odometer over the indices, so that any strided view (expanded, transposed) is read in place.
  std::vector<std::int64_t> index(shape.size(), 0);
  std::int64_t position = 0;
  for (std::int64_t n = t.numel(); n > 0; --n) {
    const T value = base[position];
    found.nan = found.nan || std::isnan(value);
    found.inf = found.inf || std::isinf(value);
    for (std::size_t axis = shape.size(); axis-- > 0;) {
      position += strides[axis];
      if (++index[axis] < shape[axis]) break;
      position -= strides[axis] * shape[axis];
      index[axis] = 0;
    }
  }
  return found;
}

NonFinite scan(const Tensor& t) {
  if (!t.defined() || !is_floating(t.dtype()) || t.numel() == 0) return {};
  // Copying another device's tensor to the host runs an op: keep that op from checking itself.
  DetectAnomalyGuard off(false);
  const Tensor host = t.device().is_cpu() ? t : t.detach().to(Device::cpu());
  return host.dtype() == DType::f32 ? scan_host<float>(host) : scan_host<double>(host);
}

std::string shapes_of(const std::vector<Tensor>& tensors) {
  std::string text;
  for (const auto& t : tensors) {
    if (!text.empty()) text += ", ";
    text += t.defined() ? to_string(t.shape()) : "none";
  }
  return text;
}

std::string shapes_of(const std::vector<Edge>& edges) {
  std::string text;
  for (const auto& edge : edges) {
    if (!text.empty()) text += ", ";
    text += to_string(edge.shape);
  }
  return text;
}

// Throws when an op turned inputs without NaN (Inf) into an output with one.
void check_forward(std::string_view op, const Tensor& output, const std::vector<Tensor>& inputs) {
  const NonFinite out = scan(output);
  if (!out.nan && !out.inf) return;
  NonFinite in;
  for (const auto& input : inputs) {
    const NonFinite found = scan(input);
    in.nan = in.nan || found.nan;
    in.inf = in.inf || found.inf;
  }
  if ((out.nan && !in.nan) || (out.inf && !in.inf))
    fail("detect-anomaly: the forward of '{}' produced {} (output {} from inputs {})", op, out.nan ? "NaN" : "Inf",
         to_string(output.shape()), shapes_of(inputs));
}

// Throws when a backward rule turned a gradient without NaN (Inf) into input gradients with one.
void check_backward(const Node& node, const Tensor& grad_output, const std::vector<Tensor>& grads) {
  const NonFinite upstream = scan(grad_output);
  for (std::size_t i = 0; i < grads.size(); ++i) {
    const NonFinite found = scan(grads[i]);
    if ((found.nan && !upstream.nan) || (found.inf && !upstream.inf))
      fail("detect-anomaly: the backward of '{}' produced {} in the gradient of input {} (shape {}; inputs {}, "
           "output gradient {})", node.op, found.nan ? "NaN" : "Inf", i, to_string(grads[i].shape()),
           shapes_of(node.inputs), to_string(grad_output.shape()));
  }
}

// The nodes reachable from root, each after all nodes that consume its output. Holds owning pointers:
// freeing a node's edges during the sweep must not free nodes still to be visited; the sweep drops each
// pointer once it has run that node.
std::vector<std::shared_ptr<Node>> topological_order(const std::shared_ptr<Node>& root) {
  std::vector<std::shared_ptr<Node>> order;
  std::unordered_set<Node*> visited{root.get()};
  // Iterative depth-first search: long graphs must not overflow the call stack.
  std::vector<std::pair<std::shared_ptr<Node>, std::size_t>> stack{{root, 0}};
  while (!stack.empty()) {
    auto& [node, next_input] = stack.back();
    const auto& inputs = node->inputs;
    if (next_input < inputs.size()) {
      const auto& input = inputs[next_input++].node;
      if (input && visited.insert(input.get()).second) stack.emplace_back(input, 0);
    } else {
      order.push_back(node);
      stack.pop_back();
    }
  }
  return {order.rbegin(), order.rend()};
}

// Whether t is the only handle on its memory and covers it once (not an expanded, stride-0 view), so that
// adding into it in place changes nothing else. Gradients on their way through the graph may have any such
// layout; a leaf's .grad must also be row-major, since optimizers index it like its parameter.
bool owns_memory(const Tensor& t) {
  return t.impl().use_count() == 1 && t.storage().use_count() == 1 &&
         dense_axis_order(t.shape(), t.strides()).has_value();
}
bool owns_buffer(const Tensor& t) { return owns_memory(t) && t.is_contiguous(); }

// A zero gradient for `input` laid out in memory with its axes in `order` (outermost first; row-major when
// empty).
Tensor zeros_in_order(const Edge& input, const std::vector<std::int64_t>& order) {
  Tensor grad = detail::empty_in_order(input.shape, order, input.dtype, input.device);
  backend_for(input.device).fill(grad, 0.0);
  return grad;
}

void free_node(Node& node) {
  node.backward = nullptr;
  node.accumulate = nullptr;
  node.inputs.clear();
}

// Leaf gradients accumulate in place (micrograd's rule: never assign). The first one is kept as it is when
// nothing else holds its memory (a rule's fresh result), else copied: it may alias a buffer that backward
// still uses (add's rule hands its incoming gradient on).
void accumulate_leaf(const Tensor& leaf, Tensor grad) {
  if (!leaf.impl()->grad) leaf.impl()->grad = owns_buffer(grad) ? grad.impl() : grad.clone().impl();
  else Tensor(leaf.impl()->grad).add_(grad);
}
}  // namespace

// Freeing a node frees the nodes behind its edges, which free theirs: a long graph that is dropped without
// a backward (or kept with retain_graph) would recurse once per op and overflow the stack. Instead, nodes
// that die with this one are collected and freed one at a time, each after its own edges were taken.
Node::~Node() {
  std::vector<std::shared_ptr<Node>> dying;
  auto take_inputs = [&dying](std::vector<Edge>& edges) {
    for (auto& edge : edges)
      if (edge.node && edge.node.use_count() == 1) dying.push_back(std::move(edge.node));
    edges.clear();
  };
  take_inputs(inputs);
  while (!dying.empty()) {
    std::shared_ptr<Node> node = std::move(dying.back());
    dying.pop_back();
    take_inputs(node->inputs);
  }
}

bool grad_enabled() { return grad_mode_enabled; }
void set_grad_enabled(bool enabled) { grad_mode_enabled = enabled; }
bool anomaly_detection_enabled() { return anomaly_mode_enabled; }
void set_anomaly_detection(bool enabled) { anomaly_mode_enabled = enabled; }

Tensor record(std::string_view op, Tensor output, std::vector<Tensor> inputs, BackwardFn backward) {
  // Before the early returns: evaluation under NoGradGuard is checked too.
  if (anomaly_mode_enabled) check_forward(op, output, inputs);
  if (!grad_enabled()) return output;
  bool any = false;
  for (const auto& input : inputs) any = any || (input.defined() && input.requires_grad());
  if (!any) return output;
  std::vector<Edge> edges(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& input = inputs[i];
    if (!input.defined()) continue;
    Edge& edge = edges[i];
    edge.shape = input.shape();
    edge.dtype = input.dtype();
    edge.device = input.device();
    if (input.grad_fn()) edge.node = input.grad_fn();
    else if (input.requires_grad()) edge.leaf = input.impl();
  }
  output.impl()->requires_grad = true;
  output.impl()->grad_fn = std::make_shared<Node>(Node{op, std::move(edges), std::move(backward), {}, {}});
  return output;
}

void run_backward(const Tensor& root, const Tensor& grad, bool retain_graph) {
  ELLIPSE_CHECK(root.requires_grad(), "backward: the tensor does not require grad (no input of the graph does)");
  Tensor seed = grad;
  if (!seed.defined()) {
    ELLIPSE_CHECK(root.numel() == 1, "backward: a gradient is needed for a non-scalar output of shape {}",
                  to_string(root.shape()));
    seed = ones_like(root);
  }
  ELLIPSE_CHECK(seed.shape() == root.shape(), "backward: gradient shape {} differs from output shape {}",
                to_string(seed.shape()), to_string(root.shape()));
  // Rules would otherwise carry the seed's dtype into the leaves (an f64 leaf with an f32 .grad).
  ELLIPSE_CHECK(seed.dtype() == root.dtype() && seed.device() == root.device(),
                "backward: gradient {} {} on {} differs from output {} {} on {}", to_string(seed.shape()),
                dtype_name(seed.dtype()), seed.device().str(), to_string(root.shape()), dtype_name(root.dtype()),
                root.device().str());
  NoGradGuard no_grad;  // backward rules build no graph of their own
  if (!root.grad_fn()) {  // a leaf: its gradient is the seed
    accumulate_leaf(root, seed);
    return;
  }

  // The gradient waiting for each node's output, keyed by the node (one node makes one output).
  std::unordered_map<Node*, Tensor> pending{{root.grad_fn().get(), seed}};
  std::vector<std::shared_ptr<Node>> order = topological_order(root.grad_fn());
  for (auto& owner : order) {
    Node& node = *owner;
    ELLIPSE_CHECK(node.backward != nullptr,
                  "backward: the graph through '{}' was already freed by an earlier backward; pass "
                  "retain_graph=true to backpropagate twice",
                  node.op);
    auto found = pending.find(&node);
    if (found == pending.end()) continue;  // no gradient flows here
    const Tensor grad_output = std::move(found->second);
    pending.erase(found);

    std::vector<bool> needs(node.inputs.size());
    for (std::size_t i = 0; i < needs.size(); ++i) needs[i] = node.inputs[i].requires_grad();
    if (node.accumulate && needs.size() == 1 && node.inputs[0].node && !anomaly_mode_enabled) {
      const Edge& input = node.inputs[0];
      Tensor& slot = pending[input.node.get()];
      if (!slot.defined()) slot = zeros_in_order(input, node.input_axis_order);
      else if (!owns_memory(slot)) slot = slot.clone();  // another rule's output may alias a live tensor
      node.accumulate(grad_output, slot);
      if (!retain_graph) free_node(node);
      owner.reset();  // the node itself goes now (free_node already dropped what its rule saved)
      continue;
    }
    std::vector<Tensor> grads;
    {
      // The ops inside a rule are not checked one by one: check_backward below names the rule's op instead.
      DetectAnomalyGuard inside_rule(false);
      grads = node.backward(grad_output, needs);
    }
    ELLIPSE_CHECK(grads.size() == node.inputs.size(), "backward of '{}' returned {} gradients for {} inputs", node.op,
                  grads.size(), node.inputs.size());
    if (anomaly_mode_enabled) check_backward(node, grad_output, grads);
    for (std::size_t i = 0; i < grads.size(); ++i) {
      if (!needs[i] || !grads[i].defined()) continue;
      const Edge& input = node.inputs[i];
      ELLIPSE_CHECK(grads[i].shape() == input.shape, "backward of '{}': gradient {} for input {} of shape {}",
                    node.op, to_string(grads[i].shape()), i, to_string(input.shape));
      if (input.node) {
        Tensor& slot = pending[input.node.get()];
        if (!slot.defined()) slot = std::move(grads[i]);
        else if (owns_memory(slot)) slot.add_(grads[i]);  // a second contribution adds in place
        else slot = add(slot, grads[i]);                   // the first may alias a live tensor
      } else {
        accumulate_leaf(Tensor(input.leaf), std::move(grads[i]));
      }
    }
    grads.clear();
    if (!retain_graph) free_node(node);
    owner.reset();  // the node itself goes now (free_node already dropped what its rule saved)
  }
}

}  // namespace ellipse
