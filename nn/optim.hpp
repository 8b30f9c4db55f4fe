#pragma once
// Optimizers (AdamW, SGD with momentum) over parameter groups, global-norm gradient clipping and the
// warm-up + cosine learning-rate schedule.
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "../core/tensor.hpp"

namespace ellipse::nn {

// Parameters that share a learning rate and a weight decay (PyTorch's parameter groups). A group's rate is
// the optimizer's lr() times lr_scale, so a schedule (set_lr) moves every group alike and keeps their ratios.
// weight_decay, when set, replaces the optimizer's default rule for every parameter of the group, whatever
// its dimension (0 turns decay off for the group).
struct ParamGroup {
  std::vector<Tensor> parameters;
  double lr_scale = 1.0;
  std::optional<double> weight_decay = std::nullopt;
};

// What every optimizer shares: its parameters, groups in order and each group's in order, with their
// group's learning-rate scale and weight decay, per-parameter buffers on the parameter's device, and the
// step count.
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update from the parameters' current .grad (parameters without a gradient are skipped).
  virtual void step() = 0;
  void zero_grad();
  // The base learning rate; each group uses lr * its lr_scale.
  void set_lr(double lr);
  double lr() const { return lr_; }
  std::int64_t steps() const { return steps_; }
  // "AdamW" or "SGD": the start of the error messages, and the kind a checkpoint records.
  const std::string& name() const { return name_; }
  // The names of each parameter's buffers, in state() order (AdamW: adam_m, adam_v; SGD with momentum:
  // momentum_buffer; without: none). A training checkpoint stores buffer b of parameter P as "b.P".
  const std::vector<std::string>& buffer_names() const { return buffer_names_; }
  // Every parameter, groups in order: the order of state().
  std::vector<Tensor> parameters() const;
  // The buffers, for checkpointing: each parameter's in turn, in parameters() order (AdamW: [m0, v0, m1, ...]).
  std::vector<Tensor> state() const;
  // Copies `state` (laid out as state() returns it, on any device) into the buffers and sets the step count.
  void load_state(const std::vector<Tensor>& state, std::int64_t steps);

 protected:
  // One parameter with its group's settings and its buffers.
  struct Slot {
    Tensor parameter;
    double lr_scale, weight_decay;
    std::vector<Tensor> buffers;  // zeros like the parameter
  };
  // `name` starts the error messages; each parameter gets a zero buffer per name in `buffer_names`;
  // `default_weight_decay` gives the decay of a parameter whose group sets none.
  Optimizer(std::string name, std::vector<ParamGroup> groups, double lr, std::vector<std::string> buffer_names,
            const std::function<double(const Tensor&)>& default_weight_decay);
  // Counts a step and returns its number (1 for the first).
  std::int64_t begin_step() { return ++steps_; }
  // The slot's gradient, contiguous, or an undefined tensor when it has none. Throws when the buffers are not
  // on the parameter's device and of its dtype (the model was moved or converted after the optimizer was built).
  Tensor gradient(const Slot& slot) const;
  std::vector<Slot>& slots() { return slots_; }

 private:
  std::string name_;
  std::vector<std::string> buffer_names_;
  std::vector<Slot> slots_;
  double lr_;
  std::int64_t steps_ = 0;
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  // decoupled; applied only to parameters of 2 or more dimensions
};

// PyTorch's AdamW. The decoupled decay of a parameter is its group's weight_decay when the group sets one
// (whatever the parameter's dimension), else options.weight_decay for parameters of 2 or more dimensions
// (matrices, embeddings) and none for the others (biases, norms). The bias correction counts the optimizer's
// steps, including those in which a parameter had no gradient.
class AdamW : public Optimizer {
 public:
  // Allocates the moments here, on each parameter's device: move the model (Module::to) first.
  AdamW(std::vector<Tensor> parameters, AdamWOptions options = {});
  AdamW(std::vector<ParamGroup> groups, AdamWOptions options = {});
  void step() override;

 private:
  AdamWOptions options_;
};

struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;  // an L2 penalty added to the gradient (PyTorch's SGD), on every parameter
  bool nesterov = false;    // needs momentum > 0 and no dampening
};

// PyTorch's SGD: g = grad + weight_decay * p; with momentum, buf = g on the first step and
// momentum * buf + (1 - dampening) * g after it, and g = buf (or g + momentum * buf with nesterov); then
// p -= lr * g. A group's weight_decay replaces options.weight_decay. "The first step" is the optimizer's
// first step, as AdamW's bias correction: a parameter that first gets a gradient later starts from a zero
// buffer. With momentum the state is one buffer per parameter; without it, none.
class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> parameters, SGDOptions options = {});
  SGD(std::vector<ParamGroup> groups, SGDOptions options = {});
  void step() override;

 private:
  SGDOptions options_;
};

// Scales all gradients so that their joint L2 norm is at most max_norm; returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& parameters, double max_norm);

// Linear warm-up from 0 to peak over `warmup` steps, then cosine decay to `final_lr` at `total` steps.
double warmup_cosine_lr(std::int64_t step, std::int64_t warmup, std::int64_t total, double peak, double final_lr);

}  // namespace ellipse::nn
