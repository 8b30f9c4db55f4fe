#pragma once
// Basic layers. Shapes and initialisation follow PyTorch, so checkpoints and results carry over.
#include "core/random.hpp"
#include "nn/module.hpp"

namespace ellipse::nn {

// y = x W^T + b with weight [out, in] and bias [out]; initialised U(-1/sqrt(in), 1/sqrt(in)) as in PyTorch.
class Linear : public Module {
 public:
  Linear(std::int64_t in_features, std::int64_t out_features, bool bias = true,
         Generator& gen = default_generator());
  Tensor forward(const Tensor& x) const;
  std::int64_t in_features() const { return weight_.shape()[1]; }
  std::int64_t out_features() const { return weight_.shape()[0]; }

 private:
  Tensor weight_, bias_;
};

}  // namespace ellipse::nn
