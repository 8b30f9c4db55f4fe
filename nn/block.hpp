#pragma once
// A pre-LN transformer block: x = x + attn(ln1(x)); x = x + mlp(ln2(x)).
#include "attention.hpp"
#include "layers.hpp"

namespace ellipse::nn {

struct BlockConfig {
  std::int64_t dim = 128;
  std::int64_t heads = 4;
  std::int64_t mlp_ratio = 4;
  double dropout = 0.0;                    // on the attention and MLP outputs, before each residual add
  std::string attention = "standard";     // a registered kind (see register_attention)
  MetricMode metric = MetricMode::sequence;  // for the kinds that estimate a metric
};

// The matrix-product FLOPs of one training step (forward and backward) of a block over `tokens` tokens in
// sequences of `keys` (each query against every key, as the products run): 6 per weight per token in the
// linear layers, and 12 keys dim per token for attention's two products.
double block_step_flops(const BlockConfig& config, double tokens, double keys);

class Block : public Module {
 public:
  // `layer` is the block's depth, handed to the attention kind's factory (elliptical attention is standard at
  // layer 0).
  Block(const BlockConfig& config, std::int64_t layer, Generator& gen = default_generator(),
        Init init = Init::pytorch);

  // x [B, N, d]; v_prev from the previous block (undefined for the first). Returns the new x and this
  // block's value heads for the next block; forward hooks see (and may replace) the new x.
  AttentionOutput forward(const Tensor& x, bool causal, const Tensor& v_prev = {}, KVCache* cache = nullptr);

  AttentionLayer& attention() const { return *attn_; }
  // Study hooks: when enabled, forward keeps the attention probabilities (see Attention), the attention
  // sublayer's output (before the residual add) and the block's output of its last call. Switching them
  // off drops what was kept.
  void keep_activations(bool on);
  const Tensor& last_attention_output() const { return last_attention_output_; }
  const Tensor& last_output() const { return last_output_; }

 private:
  std::shared_ptr<LayerNorm> ln1_, ln2_;
  std::shared_ptr<AttentionLayer> attn_;
  std::shared_ptr<MLP> mlp_;
  std::shared_ptr<Dropout> dropout_;
  bool keep_activations_ = false;
  Tensor last_attention_output_, last_output_;
};

}  // namespace ellipse::nn
