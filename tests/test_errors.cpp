// Every misuse throws ellipse::Error, and the message names the op and the shapes (or the dtypes, axes,
// ids) involved, so that the error can be acted on without a debugger.
#include <doctest/doctest.h>

#include <cmath>

#include "helpers.hpp"

using namespace ellipse;

namespace {
Tensor f32(const Shape& shape) { return zeros(shape, DType::f32); }
Tensor f64(const Shape& shape) { return zeros(shape, DType::f64); }
Tensor i64(const Shape& shape) { return zeros(shape, DType::i64); }
Tensor ids(std::vector<std::int64_t> values) {
  const auto n = static_cast<std::int64_t>(values.size());
  return from_vector(values, {n});
}
}  // namespace

TEST_CASE("binary ops: shapes that do not broadcast") {
  const Tensor a = f32({2, 3}), b = f32({4});
  CHECK_ERROR(add(a, b), "add", "[2, 3]", "[4]");
  CHECK_ERROR(sub(a, b), "sub", "[2, 3]", "[4]");
  CHECK_ERROR(mul(a, b), "mul", "[2, 3]", "[4]");
  CHECK_ERROR(div(a, b), "div", "[2, 3]", "[4]");
  CHECK_ERROR(a + b, "add", "[2, 3]", "[4]");
  CHECK_ERROR(equal(a, b), "equal", "[2, 3]", "[4]");
  CHECK_ERROR(not_equal(a, b), "not_equal", "[2, 3]", "[4]");
  CHECK_ERROR(greater(a, b), "greater", "[2, 3]", "[4]");
  CHECK_ERROR(less(a, b), "less", "[2, 3]", "[4]");
  CHECK_ERROR(greater_equal(a, b), "greater_equal", "[2, 3]", "[4]");
  CHECK_ERROR(less_equal(a, b), "less_equal", "[2, 3]", "[4]");
  CHECK_ERROR(maximum(a, b), "maximum", "[2, 3]", "[4]");
  CHECK_ERROR(minimum(a, b), "minimum", "[2, 3]", "[4]");
  CHECK_ERROR(add(f32({3, 1, 4}), f32({5, 3})), "add", "[3, 1, 4]", "[5, 3]");
  CHECK_ERROR(where(f32({2, 3}), f32({3}), f32({2})), "where", "[2, 3]", "[2]");
  CHECK_ERROR(where(f32({5}), f32({2, 3}), f32({3})), "where", "[5]", "[2, 3]");
  CHECK_ERROR(masked_fill(f32({3, 3}), causal_mask(4), -1.0), "masked_fill", "[3, 3]", "[4, 4]");
}

TEST_CASE("matmul: operands that do not chain") {
  CHECK_ERROR(matmul(f32({2, 3}), f32({4, 5})), "matmul", "[2, 3]", "[4, 5]");
  CHECK_ERROR(matmul(f32({3}), f32({4})), "matmul", "[1, 3]", "[4, 1]");
  CHECK_ERROR(matmul(f32({2, 3, 4}), f32({3, 4, 5})), "matmul", "[2]", "[3]");  // batch dims
  CHECK_ERROR(matmul(f32({}), f32({3})), "matmul", "[]", "[3]");
}

TEST_CASE("linear: input, weight and bias that do not fit") {
  CHECK_ERROR(linear(f32({2, 3}), f32({5, 4}), f32({5})), "linear", "[2, 3]", "[5, 4]", "[..., in]");
  CHECK_ERROR(linear(f32({2, 4}), f32({4}), f32({5})), "linear", "[4]", "[out, in]");
  CHECK_ERROR(linear(f32({2, 4}), f32({5, 4}), f32({4})), "linear", "bias [5]", "[4]");
  CHECK_ERROR(linear(f32({2, 4}), f32({5, 4}), f64({5})), "linear", "f32", "f64");
  CHECK_ERROR(linear(f32({}), f32({5, 4})), "linear", "[]");
}

TEST_CASE("mixed dtypes") {
  CHECK_ERROR(add(f32({2, 3}), f64({2, 3})), "add", "f32", "f64", "[2, 3]");
  CHECK_ERROR(mul(f64({3}), f32({2, 3})), "mul", "f64", "f32", "[3]", "[2, 3]");
  CHECK_ERROR(matmul(f32({2, 3}), f64({3, 4})), "matmul", "f32", "f64", "[2, 3]", "[3, 4]");
  CHECK_ERROR(where(f32({2}), f32({2}), f64({2})), "where", "f32", "f64");
  CHECK_ERROR(greater(i64({2}), f32({2})), "greater", "i64", "f32");  // comparisons take i64, but not mixed
  CHECK_ERROR(concat({f32({2}), f64({2})}, 0), "concat", "f32", "f64");
  CHECK_ERROR(layer_norm(f32({2, 4}), f64({4}), f32({4})), "layer_norm", "f32", "f64", "[2, 4]", "[4]");
  // No silent promotion either way, including integers.
  CHECK_ERROR(add(i64({2}), f32({2})), "add", "i64", "f32");
}

TEST_CASE("i64 tensors given to floating ops") {
  const Tensor x = i64({2, 3});
  CHECK_ERROR(exp(x), "exp", "i64", "[2, 3]");
  CHECK_ERROR(neg(x), "neg", "i64", "[2, 3]");
  CHECK_ERROR(relu(x), "relu", "i64", "[2, 3]");
  CHECK_ERROR(sin(x), "sin", "i64", "[2, 3]");
  CHECK_ERROR(cos(x), "cos", "i64", "[2, 3]");
  CHECK_ERROR(add(x, 1.0), "add", "i64", "[2, 3]");
  CHECK_ERROR(mul(x, x), "mul", "i64", "[2, 3]");
  CHECK_ERROR(maximum(x, x), "maximum", "i64", "[2, 3]");
  CHECK_ERROR(matmul(x, i64({3, 2})), "matmul", "i64", "[2, 3]");
  CHECK_ERROR(sum(x), "sum", "i64", "[2, 3]");
  CHECK_ERROR(max(x, {1}), "max", "i64", "[2, 3]");
  CHECK_ERROR(cumsum(x, 0), "cumsum", "i64", "[2, 3]");
  CHECK_ERROR(softmax(x, -1), "softmax", "i64", "[2, 3]");
  CHECK_ERROR(log_softmax(x, -1), "log_softmax", "i64", "[2, 3]");
  CHECK_ERROR(layer_norm(x, i64({3}), i64({3})), "layer_norm", "i64", "[2, 3]");
  CHECK_ERROR(embedding(x, ids({0})), "embedding", "i64", "[2, 3]");
  CHECK_ERROR(cross_entropy(x, ids({0, 1})), "cross_entropy", "i64", "[2, 3]");
  Generator gen(0);
  CHECK_ERROR(dropout(x, 0.5, true, gen), "dropout", "i64", "[2, 3]");
  CHECK_ERROR(Tensor(x).requires_grad_(), "requires_grad_", "i64");
  CHECK_ERROR(randn({2}, gen, DType::i64), "random", "i64");
}

TEST_CASE("layer_norm: weight and bias shapes") {
  CHECK_ERROR(layer_norm(f32({2, 4}), f32({3}), f32({4})), "layer_norm", "[3]", "[4]", "[2, 4]");
  CHECK_ERROR(layer_norm(f32({2, 4}), f32({4}), f32({1, 4})), "layer_norm", "[1, 4]", "[2, 4]");
  CHECK_ERROR(layer_norm(f32({}), f32({}), f32({})), "layer_norm", "dimension");
  CHECK_ERROR(layer_norm(f32({2, 4}), f32({4}), f32({4}), 0.0), "layer_norm", "eps");
}

TEST_CASE("embedding: ids out of range or not i64") {
  const Tensor w = f32({6, 4});
  CHECK_ERROR(embedding(w, ids({0, 6})), "embedding", "6", "[0, 6)");
  CHECK_ERROR(embedding(w, ids({2, -1})), "embedding", "-1", "[0, 6)");
  CHECK_ERROR(embedding(w, ids({0, 100})), "embedding", "100", "[0, 6)");
  CHECK_ERROR(embedding(w, f32({2})), "embedding", "i64", "f32", "[2]");
  CHECK_ERROR(embedding(f32({6}), ids({0})), "embedding", "[6]");
}

TEST_CASE("index_select and gather: indices out of range, of the wrong dtype or shape") {
  const Tensor x = f32({3, 4});
  CHECK_ERROR(index_select(x, 1, ids({0, 4})), "index_select", "index 4", "[0, 4)");
  CHECK_ERROR(index_select(x, 0, ids({2, -1})), "index_select", "index -1", "[0, 3)");
  CHECK_ERROR(index_select(x, 0, f32({2})), "index_select", "i64", "f32", "[2]");
  CHECK_ERROR(index_select(x, 0, i64({2, 1})), "index_select", "1-dimensional", "[2, 1]");
  CHECK_ERROR(index_select(x, 2, ids({0})), "index_select", "axis 2");
  CHECK_ERROR(index_select(f32({}), 0, ids({0})), "index_select", "0-dimensional");
  CHECK_ERROR(gather(x, 1, from_vector<std::int64_t>({0, 1, 5}, {3, 1})), "gather", "index 5", "[0, 4)");
  CHECK_ERROR(gather(x, 0, i64({2, 5})), "gather", "[2, 5]", "[3, 4]", "axis 0");
  CHECK_ERROR(gather(x, 1, i64({3})), "gather", "[3]", "[3, 4]", "rank");
  CHECK_ERROR(gather(x, 1, f32({3, 1})), "gather", "i64", "f32");
  CHECK_ERROR(gather(x, -3, i64({3, 1})), "gather", "axis -3");
}

TEST_CASE("topk, argmax and randperm: k out of range, empty or missing axes, integer inputs, negative sizes") {
  const Tensor x = f32({3, 4});
  CHECK_ERROR(topk(x, 5), "topk", "k = 5", "axis 1", "size 4", "[3, 4]");
  CHECK_ERROR(topk(x, -1, 0), "topk", "k = -1", "axis 0", "size 3");
  CHECK_ERROR(topk(x, 1, 2), "topk", "axis 2");
  CHECK_ERROR(topk(f32({}), 1), "topk", "0-dimensional");
  CHECK_ERROR(topk(i64({3}), 1), "topk", "i64", "[3]");
  CHECK_ERROR(argmax(f32({2, 0}), 1), "argmax", "axis 1", "[2, 0]", "empty");
  CHECK_ERROR(argmax(x, -3), "argmax", "axis -3");
  CHECK_ERROR(argmax(i64({3}), 0), "argmax", "i64", "[3]");
  CHECK_ERROR(randperm(-1), "randperm", "-1");
}

TEST_CASE("cross_entropy: targets of the wrong shape, dtype or range") {
  const Tensor logits = f32({3, 4});
  CHECK_ERROR(cross_entropy(logits, ids({0, 1, 2, 3})), "cross_entropy", "[4]", "[3, 4]", "[3]");
  CHECK_ERROR(cross_entropy(logits, zeros({3, 1}, DType::i64)), "cross_entropy", "[3, 1]", "[3, 4]");
  CHECK_ERROR(cross_entropy(logits, ids({0, 4, 1})), "cross_entropy", "4", "[0, 4)");
  CHECK_ERROR(cross_entropy(logits, ids({0, -1, 1})), "cross_entropy", "-1", "[0, 4)");
  CHECK_ERROR(cross_entropy(logits, ids({0, -100, 1}), 0), "cross_entropy", "-100");  // not the ignore_index
  CHECK_ERROR(cross_entropy(logits, f32({3})), "cross_entropy", "i64", "f32");
  CHECK_ERROR(cross_entropy(f32({}), i64({})), "cross_entropy", "[]");
  CHECK_ERROR(cross_entropy(f32({3, 0}), i64({3})), "cross_entropy", "[3, 0]");
}

TEST_CASE("reshape and view") {
  const Tensor x = f32({2, 3});
  CHECK_ERROR(reshape(x, {4, 2}), "reshape", "[2, 3]", "[4, 2]");
  CHECK_ERROR(x.reshape({-1, 4}), "reshape", "[2, 3]", "[-1, 4]");
  CHECK_ERROR(x.reshape({-1, -1}), "reshape", "-1");
  CHECK_ERROR(x.reshape({-2, 3}), "reshape", "-2");
  CHECK_ERROR(x.view({7}), "view", "[2, 3]", "[7]");
  // A transpose cannot be flattened without a copy; view says so and points to reshape.
  CHECK_ERROR(x.transpose(0, 1).view({6}), "view", "[3, 2]", "[1, 3]", "[6]", "reshape");
  CHECK_ERROR(f32({4, 6}).slice(1, 0, 4, 2).view({8}), "view", "[4, 2]", "[6, 2]", "[8]");
}

TEST_CASE("permute and transpose") {
  const Tensor x = f32({2, 3, 4});
  CHECK_ERROR(permute(x, {0, 0, 1}), "permute", "[0, 0, 1]", "[2, 3, 4]");
  CHECK_ERROR(permute(x, {0, 1}), "permute", "[0, 1]", "[2, 3, 4]");
  CHECK_ERROR(permute(x, {0, 1, 3}), "permute", "axis 3", "3 dimensions");
  CHECK_ERROR(x.transpose(0, 3), "transpose", "axis 3");
  CHECK_ERROR(f32({}).transpose(0, 0), "transpose", "0-dimensional");
}

TEST_CASE("slice, narrow and select out of range") {
  const Tensor x = f32({4, 5});
  CHECK_ERROR(slice(x, 0, 2, 6), "slice", "[2, 6)", "[4, 5]");
  CHECK_ERROR(slice(x, 1, 3, 2), "slice", "[3, 2)", "[4, 5]");
  CHECK_ERROR(slice(x, 0, 0, 4, 0), "slice", "step");
  CHECK_ERROR(slice(x, 2, 0, 1), "slice", "axis 2");
  CHECK_ERROR(slice(f32({}), 0, 0, 1), "slice", "0-dimensional");
  CHECK_ERROR(narrow(x, 1, 3, 3), "narrow", "start 3", "length 3", "[4, 5]");
  CHECK_ERROR(narrow(x, 1, 0, -1), "narrow", "-1");
  CHECK_ERROR(select(x, 0, 4), "select", "index 4", "[4, 5]");
  CHECK_ERROR(select(x, 1, -6), "select", "index -6", "[4, 5]");
  CHECK_ERROR(select(f32({}), 0, 0), "select", "0-dimensional");
}

TEST_CASE("expand, squeeze and unsqueeze") {
  CHECK_ERROR(expand(f32({2, 3}), {4, 3}), "expand", "[2, 3]", "[4, 3]");
  CHECK_ERROR(expand(f32({2, 3}), {3}), "expand", "[2, 3]", "[3]");
  CHECK_ERROR(expand(f32({3, 1}), {3, 4, 2}), "expand", "[3, 1]", "[3, 4, 2]");
  CHECK_ERROR(squeeze(f32({2, 3}), 0), "squeeze", "[2, 3]");
  CHECK_ERROR(squeeze(f32({2, 1}), 2), "squeeze", "axis 2");
  CHECK_ERROR(squeeze(f32({}), 0), "squeeze", "[]");
  CHECK_ERROR(unsqueeze(f32({2, 3}), 3), "unsqueeze", "[2, 3]");
  CHECK_ERROR(unsqueeze(f32({2, 3}), -4), "unsqueeze", "[2, 3]");
}

TEST_CASE("concat and split") {
  CHECK_ERROR(concat({f32({2, 3}), f32({3, 3})}, 1), "concat", "[3, 3]", "[2, 3]");
  CHECK_ERROR(concat({f32({2, 3}), f32({2, 3, 1})}, 0), "concat", "[2, 3, 1]", "[2, 3]");
  CHECK_ERROR(concat({f32({2, 3}), f32({2, 3})}, 2), "concat", "axis 2");
  CHECK_ERROR(concat({}, 0), "concat");
  CHECK_ERROR(concat({f32({}), f32({})}, 0), "concat", "0-dimensional");
  CHECK_ERROR(stack({f32({2, 3}), f32({3, 2})}, 0), "stack", "[3, 2]", "[2, 3]", "one shape");
  CHECK_ERROR(stack({f32({2, 3}), f32({2, 3})}, 3), "stack", "axis 3", "[2, 3]", "-3 to 2");
  CHECK_ERROR(stack({f32({2, 3}), f32({2, 3})}, -4), "stack", "axis -4", "[2, 3]");
  CHECK_ERROR(stack({f32({2}), f64({2})}, 0), "stack", "f32", "f64");
  CHECK_ERROR(stack({}, 0), "stack", "at least one");
  CHECK_ERROR(split(f32({2, 5}), {2, 2}, 1), "split", "[2, 2]", "[2, 5]");
  CHECK_ERROR(split(f32({2, 5}), {6, -1}, 1), "split", "-1");
  CHECK_ERROR(split(f32({2, 5}), {1, 1}, 2), "split", "axis 2");
  CHECK_ERROR(split(f32({}), {1}, 0), "split", "0-dimensional");
  CHECK_ERROR(scaled_softmax(f32({4, 3}), 1.0, true), "scaled_softmax", "keys", "[4, 3]");
  CHECK_ERROR(scaled_softmax(f32({3}), 1.0, true), "scaled_softmax", "causal", "[3]");
}

TEST_CASE("axes out of range or repeated") {
  const Tensor x = f32({2, 3});
  CHECK_ERROR(softmax(x, 2), "softmax", "axis 2", "2 dimensions");
  CHECK_ERROR(log_softmax(x, -3), "log_softmax", "axis -3", "2 dimensions");
  CHECK_ERROR(cumsum(x, 5), "cumsum", "axis 5", "2 dimensions");
  CHECK_ERROR(sum(x, {2}), "sum", "axis 2", "2 dimensions");
  CHECK_ERROR(mean(x, {0, -2}), "mean", "axis 0", "twice");
  CHECK_ERROR(max(x, {-3}), "max", "axis -3");
  CHECK_ERROR(max(f32({2, 0}), {1}), "max", "empty", "[2, 0]");
  CHECK_ERROR(x.size(2), "size", "axis 2");
  CHECK_ERROR(f32({}).size(0), "size", "0-dimensional");
}

TEST_CASE("backward misuse") {
  Tensor x = f64({2, 3}).requires_grad_();
  const Tensor y = mul(x, 2.0);
  CHECK_ERROR(y.backward(), "backward", "non-scalar", "[2, 3]");
  CHECK_ERROR(y.backward(ones({3}, DType::f64)), "backward", "[3]", "[2, 3]");
  CHECK_ERROR(y.backward(ones({2, 3}, DType::f32)), "backward", "f32", "f64", "[2, 3]");
  CHECK_ERROR(x.backward(ones({2, 3}, DType::f32)), "backward", "f32", "f64");  // a leaf as the root
  CHECK_FALSE(x.grad().defined());
  CHECK_ERROR(f64({2}).backward(ones({2}, DType::f64)), "backward", "does not require grad");
  {
    NoGradGuard no_grad;
    CHECK_ERROR(sum(x).backward(), "backward", "does not require grad");
  }

  // A second backward through a freed graph names the op where it found the graph gone.
  const Tensor loss = sum(mul(x, x));
  loss.backward();
  CHECK_ERROR(loss.backward(), "backward", "'sum'", "already freed", "retain_graph");
  // Also through a shared part of a graph that another loss has freed.
  const Tensor h = exp(x);
  sum(h).backward();
  CHECK_ERROR(sum(mul(h, 2.0)).backward(), "backward", "'exp'", "retain_graph");
}

TEST_CASE("requires_grad_ on a non-leaf") {
  Tensor x = f32({2}).requires_grad_();
  Tensor y = mul(x, 2.0);
  CHECK_ERROR(y.requires_grad_(false), "requires_grad_", "leaf");
}

TEST_CASE("in-place updates of tensors that take part in autograd") {
  Tensor x = f32({2, 3}).requires_grad_();
  CHECK_ERROR(x.fill_(1.0), "fill_", "[2, 3]", "autograd", "NoGradGuard");
  CHECK_ERROR(x.add_(ones({2, 3})), "add_", "[2, 3]", "autograd");
  CHECK_ERROR(x.mul_(2.0), "mul_", "[2, 3]", "autograd");
  CHECK_ERROR(x.copy_(ones({2, 3})), "copy_", "[2, 3]", "autograd");
  Tensor y = exp(x);  // not a leaf, but part of the graph
  CHECK_ERROR(y.mul_(2.0), "mul_", "[2, 3]", "autograd");
  CHECK_ERROR(x.transpose(0, 1).fill_(0.0), "fill_", "[3, 2]", "autograd");
  // Under NoGradGuard the same updates are what optimizers do.
  NoGradGuard no_grad;
  x.fill_(1.0).mul_(3.0).add_(ones({3}), 0.5);
  CHECK(x.to_vector<float>() == std::vector<float>(6, 3.5f));
}

TEST_CASE("in-place updates with mismatched shapes") {
  Tensor x = f32({2, 3});
  CHECK_ERROR(x.copy_(ones({3, 2})), "copy_", "[3, 2]", "[2, 3]");
  CHECK_ERROR(x.add_(ones({4})), "add_", "[4]", "[2, 3]");
  CHECK_ERROR(x.add_(ones({2, 2, 3})), "add_", "[2, 2, 3]", "[2, 3]");
}

TEST_CASE("moving to a device without a usable backend (no CUDA build, or no GPU)") {
  const std::string reason = ellipse::testing::error_message([] { backend_for(Device::cuda()); });
  if (reason.empty()) {
    MESSAGE("SKIPPED: this build has a working CUDA backend; the missing-backend message cannot be checked");
    return;
  }
  const Tensor x = f32({2, 3});
  CHECK_ERROR(x.to(Device::cuda()), "cuda:0", "no", "CUDA");
  CHECK_ERROR(to_device(x, Device::cuda(1)), "cuda:1", "no", "CUDA");
  CHECK_ERROR(zeros({2}, DType::f32, Device::cuda()), "cuda:0", "no", "CUDA");
  CHECK_ERROR(randn({2}, default_generator(), DType::f32, Device::cuda()), "cuda:0", "no", "CUDA");
  CHECK_ERROR(causal_mask(3, Device::cuda()), "cuda:0", "no", "CUDA");
}

TEST_CASE("creation and access misuse") {
  CHECK_ERROR(from_vector<float>({1, 2, 3}, {2, 2}), "from_vector", "3", "[2, 2]");
  CHECK_ERROR(zeros({2, -1}), "empty", "[2, -1]");
  CHECK_ERROR(arange(0, 1, 0), "arange", "step");
  CHECK_ERROR(f32({2, 3}).item(), "item", "[2, 3]");
  CHECK_ERROR(f32({2}).data<double>(), "data", "f32", "f64");
  CHECK_ERROR(Tensor().shape(), "undefined");
  CHECK_ERROR(add(Tensor(), f32({2})), "add", "undefined");
  CHECK_ERROR(Device::parse("gpu"), "device", "gpu");
  CHECK_ERROR(Device::parse("cuda:x"), "device", "cuda:x");
  Generator gen(0);
  CHECK_ERROR(uniform({2}, 1.0, 0.0, gen), "uniform", "low");
  CHECK_ERROR(gen.integer(0), "integer", "bound");
  CHECK_ERROR(causal_mask(-1), "causal_mask", "-1");
}

TEST_CASE("op arguments out of their domain") {
  Generator gen(0);
  CHECK_ERROR(clamp(f32({2}), 1.0, 0.0), "clamp", "low");
  CHECK_ERROR(dropout(f32({2}), 1.0, true, gen), "dropout", "[0, 1)");
  CHECK_ERROR(dropout(f32({2}), -0.1, true, gen), "dropout", "[0, 1)");
  CHECK_ERROR(sum_to(f32({2, 3}), {4, 3}), "sum_to", "[2, 3]", "[4, 3]");
  CHECK_ERROR(sum_to(f32({3}), {2, 3}), "sum_to", "[3]", "[2, 3]");
}

TEST_CASE("gradcheck refuses inputs it cannot perturb") {
  Tensor x = f32({2}).requires_grad_();
  CHECK_ERROR(gradcheck([](const std::vector<Tensor>& xs) { return exp(xs[0]); }, {x}), "gradcheck", "f32");
}

TEST_CASE("reductions and layers refuse what has no answer, naming the op, the shape or the value") {
  // max over an empty axis has no value (a sum's would be 0).
  CHECK_ERROR(max(f32({0, 3}), {0}), "max", "cannot reduce an empty axis", "[0, 3]");
  CHECK_ERROR(max(f32({2, 0})), "max", "empty axis", "[2, 0]");
  // Dropout that drops everything would scale by 1 / 0.
  Generator gen(0);
  CHECK_ERROR(nn::Dropout(1.0, gen), "Dropout", "[0, 1)", "got 1");
  CHECK_ERROR(nn::LayerNorm(4, 0.0), "LayerNorm", "eps", "eps=0");
}

TEST_CASE("optimizers: options, groups and state that do not fit") {
  const Tensor w = f32({2, 2}).requires_grad_(), b = f32({2}).requires_grad_();
  CHECK_ERROR(nn::AdamW({w}, {.lr = -1.0}), "AdamW", "learning rate", "-1");
  CHECK_ERROR(nn::AdamW({w}, {.beta1 = 1.0}), "AdamW", "betas", "[0, 1)", "(1, 0.999)");
  CHECK_ERROR(nn::AdamW({w}, {.eps = 0.0}), "AdamW", "eps 0");
  CHECK_ERROR(nn::AdamW({w}, {.weight_decay = -0.5}), "AdamW", "weight_decay -0.5");
  CHECK_ERROR(nn::AdamW({f32({2})}), "AdamW", "require grad", "[2]");
  CHECK_ERROR(nn::AdamW({w, b, w}), "AdamW", "[2, 2]", "appears twice");
  CHECK_ERROR(nn::AdamW({{.parameters = {w}}, {.parameters = {w}}}), "AdamW", "[2, 2]", "twice", "group 1");
  CHECK_ERROR(nn::AdamW({{.parameters = {w}}, {.parameters = {b}, .lr_scale = -2.0}}), "AdamW", "group 1",
              "lr_scale -2");
  CHECK_ERROR(nn::SGD({{.parameters = {b}, .weight_decay = -1.0}}), "SGD", "group 0", "weight_decay -1");
  CHECK_ERROR(nn::SGD({w}, {.momentum = -0.5}), "SGD", "momentum -0.5");
  CHECK_ERROR(nn::SGD({w}, {.momentum = 0.9, .dampening = 1.5}), "SGD", "dampening 1.5", "[0, 1]");
  CHECK_ERROR(nn::SGD({w}, {.nesterov = true}), "SGD", "nesterov", "momentum 0");
  CHECK_ERROR(nn::SGD({w}, {.momentum = 0.9, .dampening = 0.1, .nesterov = true}), "SGD", "nesterov",
              "dampening 0.1");

  nn::AdamW adamw({w, b});
  CHECK_ERROR(adamw.set_lr(-0.1), "AdamW::set_lr", "-0.1");
  CHECK_ERROR(adamw.set_lr(NAN), "AdamW::set_lr", "nan");
  CHECK_ERROR(adamw.load_state({f32({2, 2})}, 1), "AdamW::load_state", "1 buffers for 2 parameters", "expected 4");
  CHECK_ERROR(adamw.load_state(adamw.state(), -1), "AdamW::load_state", "negative", "-1");
  CHECK_ERROR(adamw.load_state({f32({2, 2}), f32({2, 2}), f32({3}), f32({2})}, 1), "AdamW::load_state", "buffer 2",
              "[3]", "expected shape [2]");
  nn::SGD sgd({w, b}, {.momentum = 0.9});
  CHECK_ERROR(sgd.load_state({}, 0), "SGD::load_state", "0 buffers for 2 parameters", "expected 2");
}

TEST_CASE("state dicts, dtype conversion and batches that do not fit") {
  Generator gen(0);
  nn::Linear layer(2, 3, true, gen);
  CHECK_ERROR(layer.load_state_dict({{"weight", f32({3, 2})}}), "Module::load_state_dict", "missing: 'bias'",
              "unexpected: none");
  CHECK_ERROR(layer.load_state_dict({{"weight", f32({3, 2})}, {"bias", f32({3})}, {"scale", f32({1})}}),
              "Module::load_state_dict", "missing: none", "unexpected: 'scale'");
  CHECK_ERROR(layer.load_state_dict({{"weight", f32({2, 3})}, {"bias", f32({3})}}), "Module::load_state_dict",
              "'weight'", "f32 [2, 3]", "f32 [3, 2]");
  CHECK_ERROR(layer.load_state_dict({{"weight", f64({3, 2})}, {"bias", f32({3})}}), "Module::load_state_dict",
              "'weight'", "f64 [3, 2]", "f32 [3, 2]");
  CHECK_ERROR(layer.load_state_dict({{"weight", f32({3, 2})}, {"bias", Tensor()}}), "Module::load_state_dict",
              "'bias'", "undefined");
  CHECK_ERROR(layer.load_state_dict({{"bias", f32({3})}, {"bias", f32({3})}}, false), "Module::load_state_dict",
              "'bias'", "twice");
  CHECK_ERROR(layer.to(DType::i64), "Module::to", "floating", "i64");

  CHECK_ERROR(nn::ShuffledBatches({f32({4, 2}), i64({5})}, 2, gen), "ShuffledBatches", "tensor 1 has 5 rows",
              "[5]", "tensor 0 has 4", "[4, 2]");
  CHECK_ERROR(nn::ShuffledBatches({f32({4, 2})}, 0, gen), "ShuffledBatches", "batch_size", "positive", "got 0");
  CHECK_ERROR(nn::ShuffledBatches({f32({4, 2})}, -3, gen), "ShuffledBatches", "batch_size", "got -3");
  CHECK_ERROR(nn::ShuffledBatches({}, 2, gen), "ShuffledBatches", "at least one tensor");
  CHECK_ERROR(nn::ShuffledBatches({f32({4}), f32({})}, 2, gen), "ShuffledBatches", "tensor 1", "row", "shape []");
}
