#include "nn/module.hpp"

#include <algorithm>

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

Module& Module::to(Device device) {
  NoGradGuard no_grad;  // the copies are not part of any graph
  // Every copy first, then the swaps: a copy that throws leaves every parameter where it was.
  std::vector<std::pair<Tensor, Tensor>> moves;  // (parameter, its contiguous copy on `device`)
  for (const auto& p : parameters())
    if (p.device() != device) moves.emplace_back(p, p.to(device));
  for (const auto& [param, copy] : moves) {
    TensorImpl& impl = *param.impl();
    impl.storage = copy.storage();
    impl.strides = copy.strides();
    impl.offset = 0;
    impl.grad.reset();
  }
  return *this;
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
