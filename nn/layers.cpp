#include "nn/layers.hpp"

#include <cmath>

#include "autograd/ops.hpp"
#include "core/error.hpp"

namespace ellipse::nn {

namespace {
constexpr double kGpt2Std = 0.02;

std::string shape_text(const Tensor& x) { return x.defined() ? to_string(x.shape()) : "undefined"; }
}  // namespace

Linear::Linear(std::int64_t in_features, std::int64_t out_features, bool bias, Generator& gen, Init init) {
  ELLIPSE_CHECK(in_features > 0 && out_features > 0, "Linear: sizes must be positive, got in={} out={}", in_features,
                out_features);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));  // PyTorch's kaiming_uniform(a=sqrt(5))
  weight_ = init == Init::gpt2 ? mul(randn({out_features, in_features}, gen), kGpt2Std)
                               : uniform({out_features, in_features}, -bound, bound, gen);
  weight_ = register_parameter("weight", weight_);
  if (bias) {
    bias_ = init == Init::gpt2 ? zeros({out_features}) : uniform({out_features}, -bound, bound, gen);
    bias_ = register_parameter("bias", bias_);
  }
}

Tensor Linear::forward(const Tensor& x) {
  ELLIPSE_CHECK(x.defined() && x.dim() >= 1 && x.shape().back() == in_features(),
                "Linear: expected input [..., {}], got {}", in_features(), shape_text(x));
  return hooked(linear(x, weight_, bias_));
}

Embedding::Embedding(std::int64_t num, std::int64_t dim, Generator& gen, Init init) {
  ELLIPSE_CHECK(num > 0 && dim > 0, "Embedding: sizes must be positive, got num={} dim={}", num, dim);
  const double stddev = init == Init::gpt2 ? kGpt2Std : 1.0;
  weight_ = register_parameter("weight", mul(randn({num, dim}, gen), stddev));
}

Tensor Embedding::forward(const Tensor& ids) { return hooked(embedding(weight_, ids)); }

LayerNorm::LayerNorm(std::int64_t dim, double eps) : eps_(eps) {
  ELLIPSE_CHECK(dim > 0 && eps > 0, "LayerNorm: dim and eps must be positive, got dim={} eps={}", dim, eps);
  weight_ = register_parameter("weight", ones({dim}));
  bias_ = register_parameter("bias", zeros({dim}));
}

Tensor LayerNorm::forward(const Tensor& x) { return hooked(layer_norm(x, weight_, bias_, eps_)); }

Dropout::Dropout(double p, Generator& gen) : p_(p), gen_(&gen) {
  ELLIPSE_CHECK(p >= 0 && p < 1, "Dropout: probability must be in [0, 1), got {}", p);
}

Tensor Dropout::forward(const Tensor& x) { return hooked(dropout(x, p_, training(), *gen_)); }

MLP::MLP(std::int64_t dim, std::int64_t hidden, Generator& gen, Init init)
    : fc1_(register_module("fc1", std::make_shared<Linear>(dim, hidden, true, gen, init))),
      fc2_(register_module("fc2", std::make_shared<Linear>(hidden, dim, true, gen, init))) {}

Tensor MLP::forward(const Tensor& x) { return hooked(fc2_->forward(gelu(fc1_->forward(x)))); }

}  // namespace ellipse::nn
