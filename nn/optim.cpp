#include "nn/optim.hpp"

#include <cmath>
#include <numbers>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "backends/backend.hpp"
#include "core/error.hpp"

namespace ellipse::nn {

AdamW::AdamW(std::vector<Tensor> parameters, AdamWOptions options)
    : parameters_(std::move(parameters)), options_(options) {
  ELLIPSE_CHECK(options.lr >= 0 && options.eps > 0 && options.weight_decay >= 0, "AdamW: invalid options (lr {}, "
                "eps {}, weight_decay {})", options.lr, options.eps, options.weight_decay);
  ELLIPSE_CHECK(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1,
                "AdamW: betas must lie in [0, 1), got ({}, {})", options.beta1, options.beta2);
  for (const auto& p : parameters_) {
    ELLIPSE_CHECK(p.is_contiguous() && p.requires_grad(), "AdamW: parameters must be contiguous leaves that "
                  "require grad (shape {})", to_string(p.shape()));
    m_.push_back(zeros_like(p));
    v_.push_back(zeros_like(p));
  }
}

void AdamW::step() {
  NoGradGuard no_grad;
  ++steps_;
  const double t = static_cast<double>(steps_);
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    const Tensor& p = parameters_[i];
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    ELLIPSE_CHECK(m_[i].device() == p.device(), "AdamW::step: a parameter of shape {} is on {} but its moments on "
                  "{}; create the optimizer after moving the model (Module::to)", to_string(p.shape()),
                  p.device().str(), m_[i].device().str());
    const AdamWStep step{options_.lr, options_.beta1, options_.beta2, options_.eps,
                         p.dim() >= 2 ? options_.weight_decay : 0.0, 1.0 - std::pow(options_.beta1, t),
                         1.0 - std::pow(options_.beta2, t)};
    backend_for(p.device()).adamw_step(p, contiguous(g), m_[i], v_[i], step);
  }
}

void AdamW::zero_grad() {
  for (auto& p : parameters_) p.zero_grad();
}

std::vector<Tensor> AdamW::state() const {
  std::vector<Tensor> out;
  for (std::size_t i = 0; i < m_.size(); ++i) {
    out.push_back(m_[i]);
    out.push_back(v_[i]);
  }
  return out;
}

void AdamW::load_state(const std::vector<Tensor>& state, std::int64_t steps) {
  ELLIPSE_CHECK(state.size() == 2 * parameters_.size(), "AdamW::load_state: {} buffers for {} parameters (expected {})",
                state.size(), parameters_.size(), 2 * parameters_.size());
  ELLIPSE_CHECK(steps >= 0, "AdamW::load_state: negative step count {}", steps);
  NoGradGuard no_grad;
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    m_[i].copy_(state[2 * i].to(m_[i].device()));
    v_[i].copy_(state[2 * i + 1].to(v_[i].device()));
  }
  steps_ = steps;
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
