#include "nn/module.hpp"

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "autograd/grad_mode.hpp"
#include "core/error.hpp"

namespace ellipse::nn {

void Module::collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const auto& [name, value] : parameters_) out.emplace_back(prefix + name, value);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, value] : named_parameters()) out.push_back(value);
  return out;
}

std::int64_t Module::parameter_count() const {
  std::int64_t count = 0;
  for (const auto& p : parameters()) count += p.numel();
  return count;
}

Tensor Module::parameter(const std::string& name) const {
  for (auto& [key, value] : named_parameters())
    if (key == name) return value;
  fail("Module::parameter: no parameter named '{}'", name);
}

void Module::collect_modules(const std::string& name, std::vector<std::pair<std::string, Module*>>& out) {
  out.emplace_back(name, this);
  for (const auto& [child_name, child] : children_)
    child->collect_modules(name.empty() ? child_name : name + "." + child_name, out);
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out;
  collect_modules("", out);
  return out;
}

Module& Module::find_module(const std::string& name) {
  for (auto& [key, module] : named_modules())
    if (key == name) return *module;
  fail("Module::module: no module named '{}'", name);
}

namespace {

// Replaces each parameter p by replacement(p) where that is a new tensor (a contiguous copy of p's shape): p's
// TensorImpl takes the copy's storage, strides and dtype, so every handle to p follows, and p's gradient is
// dropped. Every copy is made before the first swap: a copy that throws leaves every parameter as it was.
void replace_in_place(const std::vector<Tensor>& parameters, const std::function<Tensor(const Tensor&)>& replacement) {
  NoGradGuard no_grad;  // the copies are not part of any graph
  std::vector<std::pair<Tensor, Tensor>> swaps;  // (parameter, its replacement)
  for (const auto& p : parameters) {
    Tensor copy = replacement(p);
    if (copy.impl() != p.impl()) swaps.emplace_back(p, std::move(copy));
  }
  for (const auto& [param, copy] : swaps) {
    TensorImpl& impl = *param.impl();
    impl.storage = copy.storage();
    impl.strides = copy.strides();
    impl.offset = 0;
    impl.dtype = copy.dtype();
    impl.grad.reset();
  }
}

std::string quoted(const std::vector<std::string>& names) {
  return names.empty() ? "none" : fmt::format("'{}'", fmt::join(names, "', '"));
}

}  // namespace

Module& Module::to(Device device) {
  replace_in_place(parameters(), [device](const Tensor& p) { return p.to(device); });
  return *this;
}

Module& Module::to(DType dtype) {
  ELLIPSE_CHECK(is_floating(dtype), "Module::to: parameters must be floating, got {}", dtype_name(dtype));
  replace_in_place(parameters(), [dtype](const Tensor& p) { return p.to(dtype); });
  return *this;
}

StateDict Module::state_dict() const {
  NoGradGuard no_grad;
  StateDict out;
  for (const auto& [name, p] : named_parameters()) out.emplace_back(name, p.detach().clone());
  return out;
}

IncompatibleNames Module::load_state_dict(const StateDict& dict, bool strict) {
  std::map<std::string, Tensor> given;
  for (const auto& [name, value] : dict)
    ELLIPSE_CHECK(given.emplace(name, value).second, "Module::load_state_dict: '{}' appears twice in the dict", name);
  const auto params = named_parameters();
  IncompatibleNames skipped;
  std::set<std::string> known;
  for (const auto& [name, param] : params) {
    known.insert(name);
    if (given.count(name) == 0) skipped.missing.push_back(name);
  }
  for (const auto& [name, value] : dict)
    if (known.count(name) == 0) skipped.unexpected.push_back(name);
  ELLIPSE_CHECK(!strict || (skipped.missing.empty() && skipped.unexpected.empty()), "Module::load_state_dict: the "
                "names do not match the parameters (missing: {}; unexpected: {})", quoted(skipped.missing),
                quoted(skipped.unexpected));

  std::vector<std::pair<Tensor, Tensor>> assignments;  // (parameter, its new value)
  for (const auto& [name, param] : params) {
    const auto found = given.find(name);
    if (found == given.end()) continue;
    const Tensor& value = found->second;
    ELLIPSE_CHECK(value.defined(), "Module::load_state_dict: '{}' is an undefined tensor", name);
    ELLIPSE_CHECK(value.shape() == param.shape() && value.dtype() == param.dtype(), "Module::load_state_dict: '{}' is "
                  "{} {}, the parameter is {} {}", name, dtype_name(value.dtype()), to_string(value.shape()),
                  dtype_name(param.dtype()), to_string(param.shape()));
    assignments.emplace_back(param, value);
  }
  NoGradGuard no_grad;
  // Every transfer first, then the copies: a transfer that throws (out of memory) leaves the parameters as they were.
  for (auto& [param, value] : assignments) value = value.to(param.device());
  for (auto& [param, value] : assignments) param.copy_(value);
  return skipped;
}

Device Module::device() const {
  const auto params = named_parameters();
  if (params.empty()) return Device::cpu();
  const Device device = params.front().second.device();
  for (const auto& [name, p] : params)
    ELLIPSE_CHECK(p.device() == device, "Module::device: the parameters are on several devices ('{}' on {}, '{}' "
                  "on {})", params.front().first, device.str(), name, p.device().str());
  return device;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::zero_grad() {
  for (auto& p : parameters()) p.zero_grad();
}

std::int64_t Module::add_forward_hook(ForwardHook hook) {
  ELLIPSE_CHECK(static_cast<bool>(hook), "Module::add_forward_hook: the hook is empty");
  forward_hooks_.emplace_back(next_hook_id_, std::move(hook));
  return next_hook_id_++;
}

void Module::remove_forward_hook(std::int64_t id) {
  const auto it = std::find_if(forward_hooks_.begin(), forward_hooks_.end(),
                               [id](const auto& entry) { return entry.first == id; });
  ELLIPSE_CHECK(it != forward_hooks_.end(), "Module::remove_forward_hook: no hook with id {} on this module", id);
  forward_hooks_.erase(it);
}

Tensor Module::hooked(Tensor output) const {
  for (const auto& [id, hook] : forward_hooks_) {
    Tensor replacement = hook(*this, output);
    if (replacement.defined()) output = std::move(replacement);
  }
  return output;
}

Tensor Module::register_parameter(const std::string& name, Tensor value) {
  for (const auto& [key, existing] : parameters_)
    ELLIPSE_CHECK(key != name, "Module::register_parameter: '{}' is already registered", name);
  value.requires_grad_(true);
  parameters_.emplace_back(name, value);
  return value;
}

Sequential::Sequential(std::vector<std::shared_ptr<Layer>> layers) {
  for (auto& layer : layers) push_back(std::move(layer));
}

Sequential& Sequential::push_back(std::shared_ptr<Layer> layer) {
  ELLIPSE_CHECK(layer != nullptr, "Sequential::push_back: layer {} is null", layers_.size());
  layers_.push_back(register_module(std::to_string(layers_.size()), std::move(layer)));
  return *this;
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (const auto& layer : layers_) y = layer->forward(y);
  return hooked(std::move(y));
}

Lambda::Lambda(std::function<Tensor(const Tensor&)> function) : function_(std::move(function)) {
  ELLIPSE_CHECK(static_cast<bool>(function_), "Lambda: the function is empty");
}

}  // namespace ellipse::nn
