#pragma once
// A character-level GPT: token embedding + learned positions, L pre-LN blocks, final LayerNorm and an
// unbiased head. Its tensor names are the checkpoint format (and the PyTorch peer's):
//   tok_emb.weight [V, d], pos_emb [T, d], blocks.{i}.{ln1,attn.qkv,attn.proj,ln2,mlp.fc1,mlp.fc2}.{weight,bias},
//   ln_f.{weight,bias}, head.weight [V, d].
#include <string>
#include <vector>

#include "../nn/block.hpp"

namespace ellipse {

struct GPTConfig {
  std::string name = "gpt-s";
  std::int64_t vocab = 65;
  std::int64_t n_layer = 4;
  std::int64_t d_model = 128;
  std::int64_t n_head = 4;
  std::int64_t seq_len = 128;
  std::int64_t batch = 16;  // the preset's training batch
  double dropout = 0.0;
  std::string attention = "standard";
  nn::MetricMode metric = nn::MetricMode::causal;
};

// "gpt-s" (L=4, d=128, H=4, T=128, batch 16), "gpt-m" (L=6, d=384, H=6, T=256, batch 64) or "gpt-tiny"
// (L=2, d=32, H=2, T=32, batch 4; for tests).
GPTConfig gpt_preset(std::string_view name, std::int64_t vocab);

// The matrix-product FLOPs of one training step (forward and backward) at the config's batch and seq_len:
// the blocks' (nn::block_step_flops, every query against all seq_len keys) and 6 per weight per token in
// the head. What a step's GEMM floor is computed from (`ellipse bench`).
double gpt_step_flops(const GPTConfig& config);

class GPT : public nn::Module {
 public:
  explicit GPT(const GPTConfig& config, std::uint64_t seed = 0);
  const GPTConfig& config() const { return config_; }

  // ids [B, N] (i64, N <= seq_len) -> logits [B, N, V].
  Tensor forward(const Tensor& ids);
  // Incremental decoding: ids [B, N] are the tokens after those already in `caches` (one per layer,
  // empty at the start); returns their logits and extends the caches. Only when decodes_incrementally().
  Tensor forward_cached(const Tensor& ids, std::vector<nn::KVCache>& caches);
  // Whether every block's attention takes a KVCache (see nn::AttentionLayer::decodes_incrementally).
  bool decodes_incrementally() const;

  nn::Block& block(std::size_t i) const { return blocks_->operator[](i); }
  // Drives dropout (after initialisation); part of the training state.
  Generator& generator() { return gen_; }

 private:
  Tensor run(const Tensor& ids, std::vector<nn::KVCache>* caches);
  GPTConfig config_;
  Generator gen_;  // initialisation, then dropout
  std::shared_ptr<nn::Embedding> tok_emb_;
  Tensor pos_emb_;
  std::shared_ptr<nn::ModuleList<nn::Block>> blocks_;
  std::shared_ptr<nn::LayerNorm> ln_f_;
  std::shared_ptr<nn::Linear> head_;
};

}  // namespace ellipse

#include <memory>

#include "text.hpp"

namespace ellipse {

// config.json beside model.safetensors: model, config, n_layer, d_model, n_head, seq_len, vocab (the
// vocabulary as one string in id order), attn, m_mode, dropout.
std::string gpt_config_json(const GPTConfig& config, std::u32string_view vocab);
struct GPTCheckpointConfig {
  GPTConfig config;
  CharTokenizer tokenizer;
};
// Validates every key; errors name `path`.
GPTCheckpointConfig parse_gpt_config_json(std::string_view text, const std::string& path);

struct LoadedGPT {
  std::unique_ptr<GPT> model;
  CharTokenizer tokenizer;
};
// Reads DIR/config.json and DIR/model.safetensors; the model is in eval mode, on `device`.
LoadedGPT load_gpt(const std::string& dir, Device device = Device::cpu());
// Writes what load_gpt reads (see save_model_dir): a model trained by a loop of one's own becomes a checkpoint
// that `ellipse sample`, `eval gpt` and the probes take. The tokenizer's size must be the model's vocabulary.
void save_gpt(const std::string& dir, const GPT& model, const CharTokenizer& tokenizer);

}  // namespace ellipse
