#include "nn/block.hpp"

#include "autograd/ops.hpp"

namespace ellipse::nn {

double block_step_flops(const BlockConfig& config, double tokens, double keys) {
  const double d = static_cast<double>(config.dim);
  const double weights = (4 + 2 * static_cast<double>(config.mlp_ratio)) * d * d;  // qkv, proj, fc1, fc2
  return 6 * tokens * weights + 12 * tokens * keys * d;
}

Block::Block(const BlockConfig& config, std::int64_t layer, Generator& gen, Init init) {
  ln1_ = register_module("ln1", std::make_shared<LayerNorm>(config.dim));
  attn_ = register_module("attn", make_attention(config.attention, {.dim = config.dim,
                                                                      .heads = config.heads,
                                                                      .layer = layer,
                                                                      .metric = config.metric,
                                                                      .gen = &gen,
                                                                      .init = init}));
  ln2_ = register_module("ln2", std::make_shared<LayerNorm>(config.dim));
  mlp_ = register_module("mlp", std::make_shared<MLP>(config.dim, config.mlp_ratio * config.dim, gen, init));
  dropout_ = register_module("dropout", std::make_shared<Dropout>(config.dropout, gen));
}

void Block::keep_activations(bool on) {
  keep_activations_ = on;
  attn_->keep_attention(on);
  if (!on) {  // stale activations would outlive the probe that asked for them and pass for fresh ones
    last_attention_output_ = {};
    last_output_ = {};
  }
}

AttentionOutput Block::forward(const Tensor& x, bool causal, const Tensor& v_prev, KVCache* cache) {
  AttentionOutput attended = attn_->forward(ln1_->forward(x), causal, v_prev, cache);
  if (keep_activations_) last_attention_output_ = attended.out.detach();
  const Tensor h = add(x, dropout_->forward(attended.out));
  Tensor out = hooked(add(h, dropout_->forward(mlp_->forward(ln2_->forward(h)))));
  if (keep_activations_) last_output_ = out.detach();
  return {std::move(out), attended.v};
}

}  // namespace ellipse::nn
