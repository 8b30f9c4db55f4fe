// Every op of autograd/ops.hpp as a module function of the same name, and gradcheck. The GIL is released while
// an op runs. Optional tensors (a bias, a metric) are None when absent; generators default to the process-wide one.
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "autograd/gradcheck.hpp"
#include "autograd/ops.hpp"
#include "bindings.hpp"

namespace ellipse::python {
namespace {

using namespace nb::literals;
using Release = nb::call_guard<nb::gil_scoped_release>;
using Axes = std::vector<std::int64_t>;
using OptionalTensor = std::optional<Tensor>;

Tensor or_undefined(const OptionalTensor& tensor) { return tensor.value_or(Tensor()); }
Generator& or_default(Generator* gen) { return gen ? *gen : default_generator(); }

}  // namespace

void bind_ops(nb::module_& m) {
  // ---- views and copies ----
  m.def("reshape", &reshape, "x"_a, "shape"_a, Release(), "A view when strides allow, else a copy; one -1 allowed.");
  m.def("view", &view, "x"_a, "shape"_a, Release(), "Like reshape, but raises instead of copying.");
  m.def("permute", &permute, "x"_a, "order"_a, Release());
  m.def("transpose", &transpose, "x"_a, "a"_a, "b"_a, Release());
  m.def("narrow", &narrow, "x"_a, "axis"_a, "start"_a, "length"_a, Release());
  m.def("slice", &slice, "x"_a, "axis"_a, "start"_a, "end"_a, "step"_a = 1, Release());
  m.def("select", &select, "x"_a, "axis"_a, "index"_a, Release(), "The entry at index along axis (drops the axis).");
  m.def("expand", &expand, "x"_a, "shape"_a, Release(), "A broadcast view (stride 0).");
  m.def("unsqueeze", &unsqueeze, "x"_a, "axis"_a, Release());
  m.def("squeeze", &squeeze, "x"_a, "axis"_a, Release());
  m.def("contiguous", &contiguous, "x"_a, Release(), "x itself when already contiguous, else a contiguous copy.");
  m.def("clone", &clone, "x"_a, Release(), "Always a fresh contiguous copy.");
  m.def("to_dtype", &to_dtype, "x"_a, "dtype"_a, Release());
  m.def("to_device", &to_device, "x"_a, "device"_a, Release());
  m.def("concat", &concat, "xs"_a, "axis"_a, Release());
  m.def("stack", &stack, "xs"_a, "axis"_a, Release(), "Tensors of one shape side by side along a new axis.");
  m.def("split", &split, "x"_a, "sizes"_a, "axis"_a, Release(), "Views of consecutive parts of these sizes.");
  m.def("sum_to", &sum_to, "x"_a, "shape"_a, Release(), "Sums x over broadcast dimensions down to shape.");

  // ---- elementwise; binary ops broadcast by NumPy's rules, a Python number acts as a scalar ----
  m.def("add", nb::overload_cast<const Tensor&, const Tensor&>(&add), "a"_a, "b"_a, Release());
  m.def("add", nb::overload_cast<const Tensor&, double>(&add), "x"_a, "s"_a, Release());
  m.def("sub", nb::overload_cast<const Tensor&, const Tensor&>(&sub), "a"_a, "b"_a, Release());
  m.def("sub", nb::overload_cast<const Tensor&, double>(&sub), "x"_a, "s"_a, Release());
  m.def("mul", nb::overload_cast<const Tensor&, const Tensor&>(&mul), "a"_a, "b"_a, Release());
  m.def("mul", nb::overload_cast<const Tensor&, double>(&mul), "x"_a, "s"_a, Release());
  m.def("div", nb::overload_cast<const Tensor&, const Tensor&>(&div), "a"_a, "b"_a, Release());
  m.def("div", nb::overload_cast<const Tensor&, double>(&div), "x"_a, "s"_a, Release());
  m.def("rsub", &rsub, "x"_a, "s"_a, Release(), "s - x.");
  m.def("neg", &neg, "x"_a, Release());
  m.def("pow", &pow, "x"_a, "exponent"_a, Release());
  m.def("exp", &exp, "x"_a, Release());
  m.def("log", &log, "x"_a, Release());
  m.def("sqrt", &sqrt, "x"_a, Release());
  m.def("abs", &abs, "x"_a, Release());
  m.def("sin", &sin, "x"_a, Release(), "Of x in radians.");
  m.def("cos", &cos, "x"_a, Release(), "Of x in radians.");
  m.def("clamp", &clamp, "x"_a, "low"_a, "high"_a, Release());
  m.def("tanh", &tanh, "x"_a, Release());
  m.def("sigmoid", &sigmoid, "x"_a, Release());
  m.def("relu", &relu, "x"_a, Release());
  m.def("gelu", &gelu, "x"_a, Release(), "GELU, tanh approximation.");
  m.def("maximum", &maximum, "a"_a, "b"_a, Release(),
        "The larger of a and b, broadcast; NaN where either is NaN; ties split the gradient.");
  m.def("minimum", &minimum, "a"_a, "b"_a, Release(),
        "The smaller of a and b, broadcast; NaN where either is NaN; ties split the gradient.");
  m.def("equal", &equal, "a"_a, "b"_a, Release(), "1 where a == b, else 0, in the inputs' dtype; no gradient.");
  m.def("not_equal", &not_equal, "a"_a, "b"_a, Release(), "1 where a != b, else 0; no gradient.");
  m.def("greater", &greater, "a"_a, "b"_a, Release(), "1 where a > b, else 0; no gradient.");
  m.def("less", &less, "a"_a, "b"_a, Release(), "1 where a < b, else 0; no gradient.");
  m.def("greater_equal", &greater_equal, "a"_a, "b"_a, Release(), "1 where a >= b, else 0; no gradient.");
  m.def("less_equal", &less_equal, "a"_a, "b"_a, Release(), "1 where a <= b, else 0; no gradient.");
  m.def("where", &where, "cond"_a, "a"_a, "b"_a, Release(), "a where cond != 0, else b, broadcast.");
  m.def("masked_fill", &masked_fill, "x"_a, "mask"_a, "value"_a, Release(), "x where mask == 0, else value.");
  m.def("causal_mask", &causal_mask, "n"_a, "device"_a = Device::cpu(), Release(),
        "[n, n] f32 mask, 1 above the diagonal (the future).");

  // ---- reductions and scans; an empty axis list means all axes ----
  m.def("sum", &sum, "x"_a, "axes"_a = Axes{}, "keepdim"_a = false, Release());
  m.def("mean", &mean, "x"_a, "axes"_a = Axes{}, "keepdim"_a = false, Release());
  m.def("max", &max, "x"_a, "axes"_a = Axes{}, "keepdim"_a = false, Release(),
        "The largest entries; the gradient splits equally between tied maxima.");
  m.def("cumsum", &cumsum, "x"_a, "axis"_a, Release());

  // ---- indexing; indices are i64 ----
  m.def("index_select", &index_select, "x"_a, "axis"_a, "index"_a, Release(), "x's entries at index (1-D) along axis.");
  m.def("gather", &gather, "x"_a, "axis"_a, "index"_a, Release(), "PyTorch's gather: out[p] = x[p, axis -> index[p]].");
  m.def(
      "topk",
      [](const Tensor& x, std::int64_t k, std::int64_t axis, bool largest) {
        TopK result = topk(x, k, axis, largest);
        return std::pair(result.values, result.indices);
      },
      "x"_a, "k"_a, "axis"_a = -1, "largest"_a = true, Release(),
      "(values, indices) of the k largest (smallest unless largest) entries along axis, best first.");
  m.def("argmax", &argmax, "x"_a, "axis"_a, "keepdim"_a = false, Release(), "The i64 index of the largest entry.");
  m.def(
      "randperm",
      [](std::int64_t n, Generator* gen, Device device) { return randperm(n, or_default(gen), device); }, "n"_a,
      "gen"_a = nb::none(), "device"_a = Device::cpu(), Release(), "A random permutation of 0..n-1 (i64).");

  // ---- linear algebra ----
  m.def("matmul", &matmul, "a"_a, "b"_a, Release(), "1-D, 2-D and batched products, batch dims broadcast.");
  m.def(
      "linear", [](const Tensor& x, const Tensor& weight, const OptionalTensor& bias) {
        return linear(x, weight, or_undefined(bias));
      },
      "x"_a, "weight"_a, "bias"_a = nb::none(), Release(), "x @ weight^T + bias, weight [out, in] (PyTorch's layout).");

  // ---- neural-network ops ----
  m.def("softmax", &softmax, "x"_a, "axis"_a, Release());
  m.def("log_softmax", &log_softmax, "x"_a, "axis"_a, Release());
  m.def("scaled_softmax", &scaled_softmax, "x"_a, "scale"_a, "causal"_a, Release(),
        "softmax(scale * x) over the last axis in one pass, with the causal mask when causal.");
  m.def(
      "scaled_dot_product_attention",
      [](const Tensor& q, const Tensor& k, const Tensor& v, const OptionalTensor& metric, double scale, bool causal) {
        return scaled_dot_product_attention(q, k, v, or_undefined(metric), scale, causal);
      },
      "q"_a, "k"_a, "v"_a, "metric"_a = nb::none(), "scale"_a, "causal"_a, Release(),
      "softmax(scale * (q * m) k^T) v per batch element and head, fused; q [B, H, Nq, dh], k and v [B, H, Nk, dh].");
  m.def(
      "scaled_dot_product_attention_qkv",
      [](const Tensor& qkv, const OptionalTensor& metric, double scale, bool causal) {
        return scaled_dot_product_attention_qkv(qkv, or_undefined(metric), scale, causal);
      },
      "qkv"_a, "metric"_a = nb::none(), "scale"_a, "causal"_a, Release(),
      "scaled_dot_product_attention with q, k and v stacked in qkv [3, B, H, N, dh].");
  m.def("fused_attention_supported", &fused_attention_supported, "device"_a, "dtype"_a, "head_dim"_a);
  m.def("fused_attention_preferred", &fused_attention_preferred, "device"_a, "dtype"_a, "head_dim"_a, "causal"_a);
  m.def(
      "elliptical_metric",
      [](const Tensor& v, const Tensor& v_prev, bool causal, const OptionalTensor& past_sum, std::int64_t past) {
        EllipticalMetric result = elliptical_metric(v, v_prev, causal, or_undefined(past_sum), past);
        return std::pair(result.metric, result.sum);
      },
      "v"_a, "v_prev"_a, "causal"_a, "past_sum"_a = nb::none(), "past"_a = 0, Release(),
      "(metric, sum): elliptical attention's metric m from this and the previous layer's value heads [B, H, N, dh].");
  m.def("layer_norm", &layer_norm, "x"_a, "weight"_a, "bias"_a, "eps"_a = 1e-5, Release(),
        "Normalises over the last axis.");
  m.def("embedding", &embedding, "weight"_a, "ids"_a, Release(), "weight [V, n], i64 ids of any shape -> [..., n].");
  m.def("cross_entropy", &cross_entropy, "logits"_a, "targets"_a, "ignore_index"_a = -100, Release(),
        "Mean cross-entropy of logits [..., C] against i64 targets [...].");
  m.def(
      "dropout",
      [](const Tensor& x, double p, bool training, Generator* gen) { return dropout(x, p, training, or_default(gen)); },
      "x"_a, "p"_a, "training"_a, "gen"_a = nb::none(), Release(),
      "Zeroes each element with probability p and scales the rest by 1/(1-p) when training.");

  m.def(
      "gradcheck",
      [](const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs, double step,
         double floor, std::uint64_t seed) {
        GradcheckResult result = gradcheck(f, inputs, {step, floor, seed});
        return std::pair(result.max_error, result.worst);
      },
      "f"_a, "inputs"_a, "step"_a = 1e-6, "floor"_a = 1e-3, "seed"_a = 1,
      "(max_error, worst): f(inputs)'s backward against central differences, for the f64 inputs that require grad.");
}

}  // namespace ellipse::python
