#pragma once
// A vision transformer for 28x28 greyscale images (Fashion-MNIST). Exact, as it is a benchmark model:
// pixels in [0, 1]; 4x4 patches, 49 of them in row-major order with their pixels row-major; a linear
// patch embedding; a learned class token prepended; learned positions; pre-LN blocks without a causal
// mask (elliptical from layer 1 on); a final LayerNorm; an unbiased head on the class token.
// Tensor names (the checkpoint format and the PyTorch peer's):
//   patch_emb.{weight,bias} [d, 16] [d], cls_token [d], pos_emb [50, d],
//   blocks.{i}.{ln1,attn.qkv,attn.proj,ln2,mlp.fc1,mlp.fc2}.{weight,bias}, ln_f.{weight,bias}, head.weight [10, d].
#include <memory>
#include <string>

#include "../nn/block.hpp"

namespace ellipse {

struct ViTConfig {
  std::string name = "vit-s";
  std::int64_t image = 28;  // side of the square input
  std::int64_t patch = 4;   // side of a square patch; image must be a multiple
  std::int64_t n_layer = 6;
  std::int64_t d_model = 128;
  std::int64_t n_head = 4;
  std::int64_t classes = 10;
  std::int64_t batch = 128;  // the preset's training batch
  double dropout = 0.0;
  std::string attention = "standard";
  nn::MetricMode metric = nn::MetricMode::sequence;

  std::int64_t patches_per_side() const { return image / patch; }
  std::int64_t tokens() const { return patches_per_side() * patches_per_side() + 1; }  // + the class token
};

// "vit-s" (L=6, d=128, H=4, batch 128: 1,199,872 parameters) or "vit-xs" (L=4, d=32, H=4: 53,376
// parameters, about a tenth of the time per image, for quick looks).
ViTConfig vit_preset(std::string_view name);

// The matrix-product FLOPs of one training step at the config's batch: the blocks' (nn::block_step_flops over
// tokens() keys), the patch embedding without an input gradient (4 per weight per patch), and the head on
// the class token only.
double vit_step_flops(const ViTConfig& config);

class ViT : public nn::Module {
 public:
  explicit ViT(const ViTConfig& config, std::uint64_t seed = 0);
  const ViTConfig& config() const { return config_; }

  // images [B, image, image] f32 -> logits [B, classes].
  Tensor forward(const Tensor& images);

  nn::Block& block(std::size_t i) const { return blocks_->operator[](i); }
  Generator& generator() { return gen_; }  // initialisation, then dropout

 private:
  ViTConfig config_;
  Generator gen_;
  std::shared_ptr<nn::Linear> patch_emb_;
  Tensor cls_token_, pos_emb_;
  std::shared_ptr<nn::ModuleList<nn::Block>> blocks_;
  std::shared_ptr<nn::LayerNorm> ln_f_;
  std::shared_ptr<nn::Linear> head_;
};

// [B, S, S] -> [B, (S/p)^2, p*p]: patches in row-major order, each patch's pixels row-major.
Tensor patchify(const Tensor& images, std::int64_t patch);

// config.json beside model.safetensors: model "vit", config, image, patch, n_layer, d_model, n_head,
// classes, attn, m_mode, dropout. Parsing validates every key; errors name `path`.
std::string vit_config_json(const ViTConfig& config);
ViTConfig parse_vit_config_json(std::string_view text, const std::string& path);

// Reads DIR/config.json and DIR/model.safetensors; the model is in eval mode, on `device`.
std::unique_ptr<ViT> load_vit(const std::string& dir, Device device = Device::cpu());
// Writes what load_vit reads (see save_model_dir).
void save_vit(const std::string& dir, const ViT& model);

}  // namespace ellipse
