// Research code that embeds ellipse: a small model with elliptical attention defined here, outside the
// library, trained a few steps on synthetic data, saved, reloaded into a fresh copy, and checked to give
// the same outputs. Exit status 0 on success, 1 on any failure.
#include <ellipse/ellipse.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

namespace nn = ellipse::nn;
using ellipse::Tensor;

namespace {

// Token embedding plus learned positions, a standard attention layer, then an elliptical one whose
// metric is estimated from both layers' value heads, a final LayerNorm and a linear head.
class TinyModel : public nn::Module {
 public:
  TinyModel(std::int64_t vocab, std::int64_t dim, std::int64_t heads, std::int64_t seq_len, std::uint64_t seed)
      : gen_(seed) {
    emb_ = register_module("emb", std::make_shared<nn::Embedding>(vocab, dim, gen_));
    pos_ = register_parameter("pos", ellipse::randn({seq_len, dim}, gen_) * 0.02);
    attn0_ = register_module("attn0", std::make_shared<nn::Attention>(dim, heads, gen_));
    attn1_ = register_module(
        "attn1", std::make_shared<nn::EllipticalAttention>(dim, heads, nn::MetricMode::causal, gen_));
    ln_ = register_module("ln", std::make_shared<nn::LayerNorm>(dim));
    head_ = register_module("head", std::make_shared<nn::Linear>(dim, vocab, true, gen_));
  }

  // ids [B, N] (i64) -> logits [B, N, vocab].
  Tensor forward(const Tensor& ids) {
    const std::int64_t n = ids.shape()[1];
    Tensor x = emb_->forward(ids) + pos_.narrow(0, 0, n);
    const nn::AttentionOutput a0 = attn0_->forward(x, /*causal=*/true);
    x = x + a0.out;
    const nn::AttentionOutput a1 = attn1_->forward(x, /*causal=*/true, a0.v);
    x = x + a1.out;
    return head_->forward(ln_->forward(x));
  }

 private:
  ellipse::Generator gen_;
  std::shared_ptr<nn::Embedding> emb_;
  Tensor pos_;
  std::shared_ptr<nn::Attention> attn0_;
  std::shared_ptr<nn::EllipticalAttention> attn1_;
  std::shared_ptr<nn::LayerNorm> ln_;
  std::shared_ptr<nn::Linear> head_;
};

// Synthetic task: each target is the token one position back (the first repeats itself), which the
// model can only learn through attention.
std::pair<Tensor, Tensor> make_batch(std::int64_t batch, std::int64_t seq_len, std::int64_t vocab,
                                     ellipse::Generator& gen) {
  const Tensor ids = ellipse::randint({batch, seq_len}, vocab, gen);
  const Tensor targets = ellipse::concat({ids.narrow(1, 0, 1), ids.narrow(1, 0, seq_len - 1)}, 1).contiguous();
  return {ids, targets};
}

}  // namespace

int main() {
  try {
    constexpr std::int64_t kVocab = 16, kDim = 32, kHeads = 4, kSeq = 12, kBatch = 16, kSteps = 60;
    TinyModel model(kVocab, kDim, kHeads, kSeq, /*seed=*/1);
    nn::AdamW optimizer(model.parameters(), {.lr = 3e-3, .weight_decay = 0.0});
    ellipse::Generator data(2);

    double first = 0, last = 0;
    for (std::int64_t step = 0; step < kSteps; ++step) {
      const auto [ids, targets] = make_batch(kBatch, kSeq, kVocab, data);
      optimizer.zero_grad();
      const Tensor loss = ellipse::cross_entropy(model.forward(ids), targets);
      loss.backward();
      nn::clip_grad_norm(model.parameters(), 1.0);
      optimizer.set_lr(nn::warmup_cosine_lr(step, 10, kSteps, 3e-3, 3e-4));
      optimizer.step();
      last = loss.item();
      if (step == 0) first = last;
    }
    std::printf("embed: loss %.4f -> %.4f over %lld steps\n", first, last, static_cast<long long>(kSteps));
    if (!(last < first)) {
      std::fprintf(stderr, "embed: the loss did not fall\n");
      return 1;
    }

    // One file per process, so that concurrent runs (CI, a user's shell) do not share it.
    const auto path =
        std::filesystem::temp_directory_path() / ("ellipse-embed-" + std::to_string(getpid()) + ".safetensors");
    ellipse::save_parameters(path.string(), model);
    TinyModel reloaded(kVocab, kDim, kHeads, kSeq, /*seed=*/99);  // different initial weights
    ellipse::load_parameters(path.string(), reloaded);
    std::filesystem::remove(path);

    model.eval();
    reloaded.eval();
    ellipse::NoGradGuard no_grad;
    const Tensor ids = make_batch(4, kSeq, kVocab, data).first;
    const double diff = ellipse::max(ellipse::abs(model.forward(ids) - reloaded.forward(ids))).item();
    std::printf("embed: reloaded model's outputs differ by at most %g\n", diff);
    if (diff != 0.0) {
      std::fprintf(stderr, "embed: the reloaded model gives different outputs\n");
      return 1;
    }
    return 0;
  } catch (const ellipse::Error& e) {
    std::fprintf(stderr, "embed: error: %s\n", e.what());
    return 1;
  }
}
