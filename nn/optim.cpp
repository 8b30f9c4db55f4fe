#include "nn/optim.hpp"

#include <cmath>
#include <numbers>
#include <set>
#include <string_view>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "backends/backend.hpp"
#include "core/error.hpp"

namespace ellipse::nn {

namespace {
void check_lr(std::string_view where, double lr) {
  ELLIPSE_CHECK(std::isfinite(lr) && lr >= 0, "{}: the learning rate must be finite and >= 0, got {}", where, lr);
}
}  // namespace

Optimizer::Optimizer(std::string name, std::vector<ParamGroup> groups, double lr,
                     std::vector<std::string> buffer_names,
                     const std::function<double(const Tensor&)>& default_weight_decay)
    : name_(std::move(name)), buffer_names_(std::move(buffer_names)), lr_(lr) {
  ELLIPSE_CHECK(!name_.empty(), "Optimizer: expected a name (the kind a training checkpoint records), got \"\"");
  check_lr(name_, lr);
  // Checkpoints store buffer b of parameter P as "b.P" beside the parameters' "param.P".
  std::set<std::string> names;
  for (const auto& buffer : buffer_names_)
    ELLIPSE_CHECK(!buffer.empty() && buffer != "param" && buffer.find('.') == std::string::npos &&
                      names.insert(buffer).second,
                  "{}: buffer names must be unique, non-empty, without '.' and not 'param'; got [{}]", name_,
                  fmt::join(buffer_names_, ", "));
  std::set<const TensorImpl*> seen;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const ParamGroup& group = groups[g];
    ELLIPSE_CHECK(std::isfinite(group.lr_scale) && group.lr_scale >= 0, "{}: group {} has lr_scale {}, expected a "
                  "finite value >= 0", name_, g, group.lr_scale);
    ELLIPSE_CHECK(!group.weight_decay || (std::isfinite(*group.weight_decay) && *group.weight_decay >= 0),
                  "{}: group {} has weight_decay {}, expected a finite value >= 0", name_, g,
                  group.weight_decay.value_or(0));
    for (const auto& p : group.parameters) {
      ELLIPSE_CHECK(p.defined() && p.is_contiguous() && p.requires_grad(), "{}: parameters must be contiguous leaves "
                    "that require grad (group {}, shape {})", name_, g,
                    p.defined() ? to_string(p.shape()) : "undefined");
      ELLIPSE_CHECK(seen.insert(p.impl().get()).second, "{}: a parameter of shape {} appears twice (group {})", name_,
                    to_string(p.shape()), g);
      const double weight_decay = group.weight_decay ? *group.weight_decay : default_weight_decay(p);
      ELLIPSE_CHECK(std::isfinite(weight_decay) && weight_decay >= 0, "{}: the default weight decay of a parameter of "
                    "shape {} is {}, expected a finite value >= 0", name_, to_string(p.shape()), weight_decay);
      Slot slot{p, group.lr_scale, weight_decay, {}};
      for (std::size_t b = 0; b < buffer_names_.size(); ++b) slot.buffers.push_back(zeros_like(p));
      slots_.push_back(std::move(slot));
    }
  }
}

void Optimizer::zero_grad() {
  for (auto& slot : slots_) slot.parameter.zero_grad();
}

void Optimizer::set_lr(double lr) {
  check_lr(name_ + "::set_lr", lr);
  lr_ = lr;
}

std::vector<Tensor> Optimizer::parameters() const {
  std::vector<Tensor> out;
  for (const auto& slot : slots_) out.push_back(slot.parameter);
  return out;
}

std::vector<Tensor> Optimizer::state() const {
  std::vector<Tensor> out;
  for (const auto& slot : slots_) out.insert(out.end(), slot.buffers.begin(), slot.buffers.end());
  return out;
}

void Optimizer::load_state(const std::vector<Tensor>& state, std::int64_t steps) {
  std::vector<Tensor> buffers = this->state();  // handles to the buffers themselves
  ELLIPSE_CHECK(state.size() == buffers.size(), "{}::load_state: {} buffers for {} parameters (expected {})", name_,
                state.size(), slots_.size(), buffers.size());
  ELLIPSE_CHECK(steps >= 0, "{}::load_state: negative step count {}", name_, steps);
  // Every buffer checked before the first is overwritten.
  for (std::size_t i = 0; i < buffers.size(); ++i)
    ELLIPSE_CHECK(state[i].defined() && state[i].shape() == buffers[i].shape(), "{}::load_state: buffer {} is {}, "
                  "expected shape {}", name_, i, state[i].defined() ? to_string(state[i].shape()) : "undefined",
                  to_string(buffers[i].shape()));
  NoGradGuard no_grad;
  for (std::size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(state[i].to(buffers[i].device()));
  steps_ = steps;
}

Tensor Optimizer::gradient(const Slot& slot) const {
  const Tensor& p = slot.parameter;
  const Tensor g = p.grad();
  if (!g.defined()) return {};
  for (const auto& buffer : slot.buffers)
    ELLIPSE_CHECK(buffer.device() == p.device() && buffer.dtype() == p.dtype(), "{}::step: a parameter of shape {} is "
                  "{} on {} but its state {} on {}; create the optimizer after moving or converting the model "
                  "(Module::to)", name_, to_string(p.shape()), dtype_name(p.dtype()), p.device().str(),
                  dtype_name(buffer.dtype()), buffer.device().str());
  return contiguous(g);
}

namespace {
std::vector<ParamGroup> one_group(std::vector<Tensor> parameters) { return {{.parameters = std::move(parameters)}}; }

// The options, checked before the base class applies their weight decay (so that a bad one is named as an option).
const AdamWOptions& checked(const AdamWOptions& options) {
  ELLIPSE_CHECK(options.eps > 0 && options.weight_decay >= 0, "AdamW: invalid options (eps {}, weight_decay {}); "
                "expected eps > 0 and weight_decay >= 0", options.eps, options.weight_decay);
  ELLIPSE_CHECK(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1,
                "AdamW: betas must lie in [0, 1), got ({}, {})", options.beta1, options.beta2);
  return options;
}

const SGDOptions& checked(const SGDOptions& options) {
  ELLIPSE_CHECK(options.momentum >= 0 && options.dampening >= 0 && options.dampening <= 1 && options.weight_decay >= 0,
                "SGD: invalid options (momentum {}, dampening {}, weight_decay {}); expected momentum >= 0, dampening "
                "in [0, 1], weight_decay >= 0", options.momentum, options.dampening, options.weight_decay);
  ELLIPSE_CHECK(!options.nesterov || (options.momentum > 0 && options.dampening == 0), "SGD: nesterov needs momentum > "
                "0 and dampening 0, got momentum {} and dampening {}", options.momentum, options.dampening);
  return options;
}
}  // namespace

AdamW::AdamW(std::vector<Tensor> parameters, AdamWOptions options) : AdamW(one_group(std::move(parameters)), options) {}

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options)
    : Optimizer("AdamW", std::move(groups), checked(options).lr, {"adam_m", "adam_v"},
                [&options](const Tensor& p) { return p.dim() >= 2 ? options.weight_decay : 0.0; }),
      options_(options) {}

void AdamW::step() {
  NoGradGuard no_grad;
  const double t = static_cast<double>(begin_step());
  for (Slot& slot : slots()) {
    const Tensor g = gradient(slot);
    if (!g.defined()) continue;
    const AdamWStep step{lr() * slot.lr_scale, options_.beta1, options_.beta2, options_.eps, slot.weight_decay,
                         1.0 - std::pow(options_.beta1, t), 1.0 - std::pow(options_.beta2, t)};
    backend_for(slot.parameter.device()).adamw_step(slot.parameter, g, slot.buffers[0], slot.buffers[1], step);
  }
}

SGD::SGD(std::vector<Tensor> parameters, SGDOptions options) : SGD(one_group(std::move(parameters)), options) {}

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions options)
    : Optimizer("SGD", std::move(groups), checked(options).lr,
                options.momentum != 0 ? std::vector<std::string>{"momentum_buffer"} : std::vector<std::string>{},
                [&options](const Tensor&) { return options.weight_decay; }),
      options_(options) {}

void SGD::step() {
  NoGradGuard no_grad;
  const bool first_step = begin_step() == 1;
  for (Slot& slot : slots()) {
    Tensor g = gradient(slot);
    if (!g.defined()) continue;
    Tensor& p = slot.parameter;
    if (slot.weight_decay != 0) g = add(g, mul(p, slot.weight_decay));
    if (options_.momentum != 0) {
      Tensor& buffer = slot.buffers[0];
      if (first_step) {
        buffer.copy_(g);
      } else {
        buffer.mul_(options_.momentum).add_(g, 1.0 - options_.dampening);
      }
      g = options_.nesterov ? add(g, mul(buffer, options_.momentum)) : buffer;
    }
    p.add_(g, -lr() * slot.lr_scale);
  }
}

double clip_grad_norm(const std::vector<Tensor>& parameters, double max_norm) {
  ELLIPSE_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be positive, got {}", max_norm);
  NoGradGuard no_grad;
  // Each gradient's sum of squares (exactly widened to f64), read back in one copy (one wait on a GPU, not
  // one per parameter) and added up in parameter order.
  std::vector<Tensor> squares;
  for (const auto& p : parameters) {
    const Tensor g = p.grad();
    if (g.defined()) squares.push_back(reshape(to_dtype(sum(mul(g, g)), DType::f64), {1}));
  }
  double total = 0;
  if (!squares.empty())
    for (const double square : concat(squares, 0).to_vector<double>()) total += square;
  const double norm = std::sqrt(total);
  const double coefficient = max_norm / (norm + 1e-6);
  if (coefficient < 1.0)
    for (const auto& p : parameters)
      if (p.grad().defined()) p.grad().mul_(coefficient);
  return norm;
}

double warmup_cosine_lr(std::int64_t step, std::int64_t warmup, std::int64_t total, double peak, double final_lr) {
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (step >= total) return final_lr;
  const double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max<std::int64_t>(1, total - warmup));
  return final_lr + 0.5 * (peak - final_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace ellipse::nn
