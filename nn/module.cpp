#include "nn/module.hpp"

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

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::zero_grad() {
  for (auto& p : parameters()) p.zero_grad();
}

Tensor Module::register_parameter(const std::string& name, Tensor value) {
  for (const auto& [key, existing] : parameters_)
    ELLIPSE_CHECK(key != name, "Module::register_parameter: '{}' is already registered", name);
  value.requires_grad_(true);
  parameters_.emplace_back(name, value);
  return value;
}

}  // namespace ellipse::nn
