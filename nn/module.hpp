#pragma once
// Module: a tree of named parameters and sub-modules, with PyTorch-style dotted names
// ("blocks.0.attn.qkv.weight") and a train/eval flag.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace ellipse::nn {

// Tensors by parameter name, in order.
using StateDict = std::vector<std::pair<std::string, Tensor>>;

// The names Module::load_state_dict skipped: parameters the dict lacks, and entries that name no parameter.
struct IncompatibleNames {
  std::vector<std::string> missing, unexpected;
};

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Every parameter of this module and its children, depth first in registration order.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  std::int64_t parameter_count() const;
  // The parameter with this dotted name; throws naming it when absent.
  Tensor parameter(const std::string& name) const;
  // This module ("") and every module under it with its dotted name ("blocks.0.attn"), depth first in
  // registration order: how research code reaches a layer (for its probes, say) without knowing the path to it.
  // The pointers are the modules themselves and live as long as this module.
  std::vector<std::pair<std::string, Module*>> named_modules();
  // The sub-module with this dotted name, as M (nn::Module for any); throws naming it when absent or of
  // another type.
  template <class M = Module>
  M& module(const std::string& name) {
    M* typed = dynamic_cast<M*>(&find_module(name));
    ELLIPSE_CHECK(typed != nullptr, "Module::module: '{}' is not of the requested type", name);
    return *typed;
  }

  // Moves every parameter to `device` in place and returns *this. Each parameter's TensorImpl gets a
  // contiguous copy on the device, so every handle to it (the modules' own members, the caller's) follows;
  // views taken earlier keep the old storage. Gradients of moved parameters are dropped; parameters already
  // on `device` are left as they are (to the current device is a no-op). All or nothing: when a copy fails
  // (no such device, out of memory), nothing has moved. nn::AdamW allocates its moments on the parameters'
  // device when it is constructed, so build the optimizer after the move.
  Module& to(Device device);
  // The device of the parameters (the CPU when there are none); throws when they are on several.
  Device device() const;
  // Converts every parameter to the floating `dtype` in place and returns *this, as to(Device) moves them:
  // handles follow, gradients of converted parameters are dropped, all or nothing. For gradchecking a whole
  // model in f64 (build the optimizer after the conversion: its state has the parameters' dtype).
  Module& to(DType dtype);

  // Detached copies of the parameters under their dotted names, in named_parameters() order: a snapshot that
  // later training does not change (io::save_safetensors writes it as it is).
  StateDict state_dict() const;
  // Copies `dict` into the parameters in place, onto each parameter's device; handles to them follow. Each
  // entry must have its parameter's shape and dtype. With `strict` the names must be exactly the parameters';
  // otherwise missing and unexpected names are skipped and returned. Validates everything before copying
  // anything: on an error no parameter has changed.
  IncompatibleNames load_state_dict(const StateDict& dict, bool strict = true);

  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }
  void zero_grad();

  // Forward hooks, for probes and interventions: each runs on this module's output every time its forward
  // returns, in the order they were added, and returns either an undefined tensor (keep the output) or a tensor
  // that replaces it for the caller and for the hooks after it. For a module whose forward returns several
  // tensors (an attention layer, a block), the hooks see the one its caller adds to the residual stream. Returns
  // an id for remove_forward_hook.
  using ForwardHook = std::function<Tensor(const Module& module, const Tensor& output)>;
  std::int64_t add_forward_hook(ForwardHook hook);
  void remove_forward_hook(std::int64_t id);  // an unknown id is an error

 protected:
  // The last step of every forward in the library: runs the forward hooks on `output`. A module of one's own
  // returns through it too, to be hookable.
  Tensor hooked(Tensor output) const;
  Tensor register_parameter(const std::string& name, Tensor value);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    children_.emplace_back(name, module);
    return module;
  }

 private:
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;
  void collect_modules(const std::string& name, std::vector<std::pair<std::string, Module*>>& out);
  Module& find_module(const std::string& name);
  std::vector<std::pair<std::string, Tensor>> parameters_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  std::vector<std::pair<std::int64_t, ForwardHook>> forward_hooks_;
  std::int64_t next_hook_id_ = 0;
  bool training_ = true;
};

// A module of one tensor in and one tensor out, called through a virtual forward: what Sequential chains, and
// the type to hold when any such layer will do.
class Layer : public Module {
 public:
  virtual Tensor forward(const Tensor& x) = 0;
};

// Layers applied in order, named "0", "1", ... (so their parameters are "0.weight", as in torch.nn.Sequential).
class Sequential : public Layer {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<std::shared_ptr<Layer>> layers);
  Sequential& push_back(std::shared_ptr<Layer> layer);
  Tensor forward(const Tensor& x) override;
  std::size_t size() const { return layers_.size(); }
  Layer& operator[](std::size_t i) const { return *layers_.at(i); }

 private:
  std::vector<std::shared_ptr<Layer>> layers_;
};

// A layer without parameters from a function of one tensor, for Sequential: Lambda([](const Tensor& x) {
// return relu(x); }).
class Lambda : public Layer {
 public:
  explicit Lambda(std::function<Tensor(const Tensor&)> function);
  Tensor forward(const Tensor& x) override { return hooked(function_(x)); }

 private:
  std::function<Tensor(const Tensor&)> function_;
};

}  // namespace ellipse::nn
