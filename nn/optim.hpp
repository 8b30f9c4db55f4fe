#pragma once
// AdamW, global-norm gradient clipping and the warm-up + cosine learning-rate schedule.
#include <vector>

#include "../core/tensor.hpp"

namespace ellipse::nn {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  // decoupled; applied only to parameters of 2 or more dimensions
};

class AdamW {
 public:
  // Allocates the moments here, on each parameter's device: move the model (Module::to) first.
  AdamW(std::vector<Tensor> parameters, AdamWOptions options = {});
  // One update from the parameters' current .grad (parameters without a gradient are skipped).
  void step();
  void zero_grad();
  void set_lr(double lr) { options_.lr = lr; }
  double lr() const { return options_.lr; }
  std::int64_t steps() const { return steps_; }
  // Moment buffers, in parameter order, for checkpointing: [m0, v0, m1, v1, ...].
  std::vector<Tensor> state() const;
  // Copies `state` (laid out as state() returns it, on any device) into the moments.
  void load_state(const std::vector<Tensor>& state, std::int64_t steps);

 private:
  std::vector<Tensor> parameters_, m_, v_;
  AdamWOptions options_;
  std::int64_t steps_ = 0;
};

// Scales all gradients so that their joint L2 norm is at most max_norm; returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& parameters, double max_norm);

// Linear warm-up from 0 to peak over `warmup` steps, then cosine decay to `final_lr` at `total` steps.
double warmup_cosine_lr(std::int64_t step, std::int64_t warmup, std::int64_t total, double peak, double final_lr);

}  // namespace ellipse::nn
