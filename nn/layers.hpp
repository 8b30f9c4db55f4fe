#pragma once
// Basic layers. Parameter shapes follow PyTorch (Linear weight [out, in], ...), so checkpoints carry over.
#include "../core/random.hpp"
#include "module.hpp"

namespace ellipse::nn {

// How a layer's parameters start. `pytorch` copies torch.nn's defaults; `gpt2` draws weights from
// N(0, 0.02) with zero biases, the usual choice for transformers trained from scratch.
enum class Init { pytorch, gpt2 };

// y = x W^T + b with weight [out, in] and bias [out].
class Linear : public Layer {
 public:
  Linear(std::int64_t in_features, std::int64_t out_features, bool bias = true, Generator& gen = default_generator(),
         Init init = Init::pytorch);
  Tensor forward(const Tensor& x) override;
  std::int64_t in_features() const { return weight_.shape()[1]; }
  std::int64_t out_features() const { return weight_.shape()[0]; }
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }

 private:
  Tensor weight_, bias_;
};

// Rows of weight [num, dim] looked up by i64 ids.
class Embedding : public Layer {
 public:
  Embedding(std::int64_t num, std::int64_t dim, Generator& gen = default_generator(), Init init = Init::pytorch);
  Tensor forward(const Tensor& ids) override;
  const Tensor& weight() const { return weight_; }

 private:
  Tensor weight_;
};

// Normalises the last axis; weight starts at 1, bias at 0.
class LayerNorm : public Layer {
 public:
  explicit LayerNorm(std::int64_t dim, double eps = 1e-5);
  Tensor forward(const Tensor& x) override;

 private:
  Tensor weight_, bias_;
  double eps_;
};

// Zeroes activations with probability p in training mode; the identity in eval mode.
class Dropout : public Layer {
 public:
  explicit Dropout(double p, Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;
  double p() const { return p_; }

 private:
  double p_;
  Generator* gen_;
};

// fc1 (d -> hidden), GELU (tanh approximation), fc2 (hidden -> d).
class MLP : public Layer {
 public:
  MLP(std::int64_t dim, std::int64_t hidden, Generator& gen = default_generator(), Init init = Init::pytorch);
  Tensor forward(const Tensor& x) override;

 private:
  std::shared_ptr<Linear> fc1_, fc2_;
};

// An ordered list of sub-modules named "0", "1", ...
template <class M>
class ModuleList : public Module {
 public:
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    items_.push_back(register_module(std::to_string(items_.size()), std::move(module)));
    return items_.back();
  }
  std::size_t size() const { return items_.size(); }
  M& operator[](std::size_t i) const { return *items_.at(i); }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  std::vector<std::shared_ptr<M>> items_;
};

}  // namespace ellipse::nn
