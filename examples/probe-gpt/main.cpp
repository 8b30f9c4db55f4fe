// Probing a trained model from research code: train a small character GPT with the library's trainer, load the
// checkpoint, and read what happens inside it with forward hooks (each layer's queries and keys from its qkv
// projection, hence its pre-softmax scores) and with the study's probe (collapse, head redundancy, the metric m).
// Then an intervention: ablate one attention layer through a hook and measure what the loss loses. Exit status
// 0 when every check holds.
#include <ellipse/ellipse.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace nn = ellipse::nn;
using ellipse::Tensor;

namespace {

bool check(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what.c_str());
  return ok;
}

}  // namespace

int main() {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("ellipse-probe-gpt-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream text(dir / "text.txt");
    for (int i = 0; i < 150; ++i) text << "to be or not to be, that is the question. ";
  }
  ellipse::GPTTrainOptions options;
  options.text_path = (dir / "text.txt").string();
  options.config = "gpt-tiny";
  options.attention = "elliptical";
  options.steps = 80;
  options.eval_every = 40;
  options.warmup = 5;
  options.lr = 3e-3;
  options.out_dir = (dir / "run").string();
  const double val_loss = ellipse::train_gpt(options, {}, {}).val_loss;

  ellipse::LoadedGPT loaded = ellipse::load_gpt(options.out_dir);
  ellipse::GPT& model = *loaded.model;
  const ellipse::GPTConfig& config = model.config();
  const std::int64_t heads = config.n_head, head_dim = config.d_model / config.n_head;
  const std::vector<std::int64_t> ids = loaded.tokenizer.encode(U"to be or not to be, that is the q");  // 32 inputs: the context
  const std::int64_t n = static_cast<std::int64_t>(ids.size()) - 1;
  const Tensor inputs = ellipse::from_vector(std::vector<std::int64_t>(ids.begin(), ids.end() - 1), {1, n});
  const Tensor targets = ellipse::from_vector(std::vector<std::int64_t>(ids.begin() + 1, ids.end()), {1, n});
  ellipse::NoGradGuard no_grad;
  const double clean_loss = ellipse::cross_entropy(model.forward(inputs), targets).item();
  bool ok = check(std::abs(clean_loss) < 10 && val_loss < 2.0, "the trained model reloads and predicts");

  // Queries and keys: the qkv projection's output [B, N, 3d] is [q | k | v], each split into heads.
  std::vector<Tensor> scores(static_cast<std::size_t>(config.n_layer));
  std::vector<std::int64_t> hooks;
  for (std::int64_t l = 0; l < config.n_layer; ++l) {
    nn::Module& qkv = model.module("blocks." + std::to_string(l) + ".attn.qkv");
    hooks.push_back(qkv.add_forward_hook([&, l](const nn::Module&, const Tensor& out) {
      const Tensor split = ellipse::permute(ellipse::view(out, {1, n, 3, heads, head_dim}), {2, 0, 3, 1, 4});
      const Tensor q = ellipse::select(split, 0, 0), k = ellipse::select(split, 0, 1);
      // Before the metric and the softmax: standard attention's scaled dot products.
      scores[static_cast<std::size_t>(l)] =
          ellipse::matmul(q, ellipse::transpose(k, -1, -2)) / std::sqrt(static_cast<double>(head_dim));
      return Tensor{};
    }));
  }
  std::vector<nn::Block*> blocks;
  for (std::size_t l = 0; l < static_cast<std::size_t>(config.n_layer); ++l) blocks.push_back(&model.block(l));
  {
    nn::BlockProbe probe(blocks);
    model.forward(inputs);
    probe.collect();
    const nn::LayerStudy study = probe.result();
    for (std::size_t l = 0; l < blocks.size(); ++l) {
      const Tensor& s = scores[l];  // [1, H, N, N]
      std::printf("layer %zu: scores %s in [%.2f, %.2f], collapse %.3f, head redundancy %.3f, m %s\n", l,
                  ellipse::to_string(s.shape()).c_str(), -ellipse::max(ellipse::neg(s)).item(),
                  ellipse::max(s).item(), study.collapse_block[l], study.head_redundancy[l],
                  study.mean_metric[l].empty() ? "none (standard layer)" : "per head and coordinate");
    }
    ok &= check(scores[0].shape() == ellipse::Shape{1, heads, n, n}, "every layer's pre-softmax scores are read");
    ok &= check(study.mean_metric[0].empty() && !study.mean_metric[1].empty(), "layer 1 on has a metric m");
  }
  for (std::int64_t l = 0; l < config.n_layer; ++l)
    model.module("blocks." + std::to_string(l) + ".attn.qkv").remove_forward_hook(hooks[static_cast<std::size_t>(l)]);

  // Intervention: the last layer's attention output replaced by zeros.
  nn::Module& last = model.module("blocks." + std::to_string(config.n_layer - 1) + ".attn");
  const auto ablation =
      last.add_forward_hook([](const nn::Module&, const Tensor& out) { return ellipse::zeros_like(out); });
  const double ablated_loss = ellipse::cross_entropy(model.forward(inputs), targets).item();
  last.remove_forward_hook(ablation);
  std::printf("loss %.3f clean, %.3f with the last attention layer ablated\n", clean_loss, ablated_loss);
  ok &= check(ablated_loss > clean_loss, "ablating attention costs loss");
  ok &= check(ellipse::cross_entropy(model.forward(inputs), targets).item() == clean_loss, "removing the hook restores it");
  std::filesystem::remove_all(dir);
  return ok ? 0 : 1;
}
