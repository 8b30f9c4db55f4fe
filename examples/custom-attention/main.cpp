// Research code that brings its own attention to the library's models: cosine attention (queries and keys
// normalised per head, scores scaled by a learned per-head temperature), written here from library ops and
// registered as the kind "cosine". It then trains inside the library's GPT through the library's trainer
// (checkpoint reloaded by kind name), inside the ViT with a loop of our own, is compared with standard
// attention by the study's probes and a forward hook, and then by the GPT study itself (study::run_gpt_study,
// what `ellipse study gpt` runs). Exit status 0 when every check holds.
#include <ellipse/ellipse.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

namespace nn = ellipse::nn;
using ellipse::Tensor;

namespace {

class CosineAttention : public nn::AttentionLayer {
 public:
  explicit CosineAttention(const nn::AttentionSlot& slot) : heads_(slot.heads), head_dim_(slot.dim / slot.heads) {
    ELLIPSE_CHECK(slot.dim % slot.heads == 0, "CosineAttention: dim {} is not a multiple of heads {}", slot.dim,
                  slot.heads);
    qkv_ = register_module("qkv", std::make_shared<nn::Linear>(slot.dim, 3 * slot.dim, true, *slot.gen, slot.init));
    proj_ = register_module("proj", std::make_shared<nn::Linear>(slot.dim, slot.dim, true, *slot.gen, slot.init));
    // Cosines lie in [-1, 1]: a temperature of 10 lets a head's softmax be peaked from the start.
    log_temperature_ = register_parameter("log_temperature", ellipse::full({slot.heads, 1, 1}, std::log(10.0)));
  }

  nn::AttentionOutput forward(const Tensor& x, bool causal, const Tensor&, nn::KVCache* cache) override {
    ELLIPSE_CHECK(cache == nullptr, "CosineAttention: takes whole sequences only (no key-value cache)");
    const std::int64_t batch = x.shape()[0], n = x.shape()[1];
    const Tensor heads = ellipse::permute(ellipse::view(qkv_->forward(x), {batch, n, 3, heads_, head_dim_}),
                                          {2, 0, 3, 1, 4});  // [3, B, H, N, dh]
    const Tensor q = unit_rows(ellipse::select(heads, 0, 0)), k = unit_rows(ellipse::select(heads, 0, 1));
    const Tensor v = ellipse::select(heads, 0, 2);
    const Tensor scores = ellipse::matmul(q, ellipse::transpose(k, -1, -2)) * ellipse::exp(log_temperature_);
    const Tensor probs = ellipse::scaled_softmax(scores, 1.0, causal);
    if (keeps_attention()) record_attention(probs);
    const Tensor out = ellipse::reshape(ellipse::permute(ellipse::matmul(probs, v), {0, 2, 1, 3}),
                                        {batch, n, heads_ * head_dim_});
    return {hooked(proj_->forward(out)), v};
  }
  bool decodes_incrementally() const override { return false; }  // sampling recomputes the window instead

 private:
  static Tensor unit_rows(const Tensor& x) { return x / ellipse::sqrt(ellipse::sum(x * x, {-1}, true) + 1e-6); }

  std::int64_t heads_, head_dim_;
  std::shared_ptr<nn::Linear> qkv_, proj_;
  Tensor log_temperature_;
};

bool check(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what.c_str());
  return ok;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A small text of 14 distinct characters for the GPTs.
std::filesystem::path write_text(const std::filesystem::path& dir) {
  const std::filesystem::path text = dir / "text.txt";
  std::ofstream out(text);
  for (int i = 0; i < 120; ++i) out << "the cat sat on the mat. the dog sat on the log. ";
  return text;
}

// The library's trainer, checkpoint loader and evaluation, with the kind given by name.
bool gpt_with_cosine_attention(const std::filesystem::path& dir, const std::filesystem::path& text) {
  ellipse::GPTTrainOptions options;
  options.text_path = text.string();
  options.config = "gpt-tiny";
  options.attention = "cosine";
  options.steps = 60;
  options.eval_every = 30;
  options.warmup = 5;
  options.lr = 3e-3;
  options.out_dir = (dir / "gpt").string();
  const ellipse::EvalRecord last = ellipse::train_gpt(options, {}, [](const ellipse::EvalRecord& r) {
    std::printf("gpt step %lld: train loss %.3f, val loss %.3f\n", static_cast<long long>(r.step), r.train_loss,
                r.val_loss);
  });
  ellipse::LoadedGPT loaded = ellipse::load_gpt(options.out_dir);  // rebuilt as "cosine" from config.json
  const bool is_cosine = dynamic_cast<CosineAttention*>(&loaded.model->block(1).attention()) != nullptr;
  // 14 characters: a uniform guess costs log(14) = 2.64 nats.
  return check(last.val_loss < 2.0, "the GPT with cosine attention learns (val loss " + std::to_string(last.val_loss) +
                                        ")") &
         check(is_cosine && loaded.model->config().attention == "cosine", "its checkpoint reloads as cosine attention");
}

// The GPT study with cosine attention beside standard attention: both trained with the same seed and data
// order, their val losses clean and with a corrupted context, collapse and head redundancy in summary.json and
// report.md. The smoke preset (gpt-tiny, 20 steps) keeps it to seconds; its numbers mean little.
bool study_cosine_against_standard(const std::filesystem::path& dir, const std::filesystem::path& text) {
  ellipse::study::StudyGptOptions options;
  options.preset = "smoke";
  options.attention = {"standard", "cosine"};
  options.text_path = text.string();
  options.out_dir = (dir / "study").string();
  ellipse::study::StudyCallbacks callbacks;
  callbacks.on_message = [](const std::string& line) { std::printf("study: %s\n", line.c_str()); };
  const ellipse::study::StudyResult result = ellipse::study::run_gpt_study(options, callbacks);
  const std::string summary = read_text(result.summary_path), report = read_text(result.report_path);
  return check(result.summarized && summary.find("\"variants\": [\n    \"standard\",\n    \"cosine\"\n  ]") !=
                                        std::string::npos,
               "the study's summary.json holds both kinds") &
         check(report.find("| metric | standard | cosine |") != std::string::npos,
               "its report.md compares them side by side");
}

// Images whose class is the brightest of four quadrants, in a loop of our own; then a probe of the trained models.
struct ViTResult {
  double accuracy = 0;
  nn::LayerStudy study;
};

ViTResult train_vit_on_quadrants(const std::string& attention) {
  ellipse::ViTConfig config = ellipse::vit_preset("vit-xs");
  config.attention = attention;
  config.classes = 4;
  ellipse::ViT model(config, /*seed=*/0);
  nn::AdamW optimizer(model.parameters(), {.lr = 3e-3, .weight_decay = 0.0});
  ellipse::Generator gen(7);
  const auto batch_of = [&](std::int64_t size) {
    const Tensor labels = ellipse::uniform({size}, 0, 4, gen).to(ellipse::DType::i64);
    std::vector<float> pixels(static_cast<std::size_t>(size * 28 * 28), 0.1f);
    const auto label = labels.to_vector<std::int64_t>();
    for (std::int64_t i = 0; i < size; ++i)
      for (std::int64_t r = 0; r < 14; ++r)
        for (std::int64_t c = 0; c < 14; ++c) {
          const std::int64_t row = r + 14 * (label[i] / 2), col = c + 14 * (label[i] % 2);
          pixels[static_cast<std::size_t>((i * 28 + row) * 28 + col)] = 0.9f;
        }
    const Tensor noise = ellipse::uniform({size, 28, 28}, 0.0, 0.3, gen);
    return std::pair{ellipse::from_vector(pixels, {size, 28, 28}) + noise, labels};
  };
  for (int step = 0; step < 40; ++step) {
    const auto [images, labels] = batch_of(32);
    optimizer.zero_grad();
    ellipse::cross_entropy(model.forward(images), labels).backward();
    optimizer.step();
  }

  model.eval();
  std::vector<nn::Block*> blocks;
  for (std::size_t i = 0; i < static_cast<std::size_t>(config.n_layer); ++i) blocks.push_back(&model.block(i));
  nn::BlockProbe probe(blocks);  // the study's measurements: collapse and head redundancy per layer
  double attention_norm = 0;    // a forward hook reading the last attention sublayer's output
  nn::Module& last_attention = model.module("blocks." + std::to_string(config.n_layer - 1) + ".attn");
  const auto hook = last_attention.add_forward_hook([&](const nn::Module&, const Tensor& out) {
    attention_norm = ellipse::sqrt(ellipse::mean(out * out)).item();
    return Tensor{};
  });
  ellipse::NoGradGuard no_grad;
  const auto [images, labels] = batch_of(200);
  const Tensor logits = model.forward(images);
  probe.collect();
  last_attention.remove_forward_hook(hook);
  // A prediction is right when the true class's logit is the row's largest.
  const auto values = logits.to_vector<float>();
  const auto truth = labels.to_vector<std::int64_t>();
  std::int64_t right = 0;
  for (std::size_t i = 0; i < truth.size(); ++i) {
    std::size_t best = 0;
    for (std::size_t c = 1; c < 4; ++c)
      if (values[i * 4 + c] > values[i * 4 + best]) best = c;
    right += static_cast<std::int64_t>(best) == truth[i];
  }
  std::printf("vit (%s attention): accuracy %.3f, last attention output rms %.3f\n", attention.c_str(),
              static_cast<double>(right) / 200.0, attention_norm);
  return {static_cast<double>(right) / 200.0, probe.result()};
}

}  // namespace

int main() {
  nn::register_attention("cosine",
                         [](const nn::AttentionSlot& slot) { return std::make_shared<CosineAttention>(slot); });
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("ellipse-custom-attention-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::filesystem::path text = write_text(dir);
  bool ok = gpt_with_cosine_attention(dir, text);
  ok &= study_cosine_against_standard(dir, text);
  std::filesystem::remove_all(dir);

  const ViTResult standard = train_vit_on_quadrants("standard"), cosine = train_vit_on_quadrants("cosine");
  ok &= check(cosine.accuracy > 0.9, "the ViT with cosine attention learns the quadrants");
  std::printf("layer  collapse (standard / cosine)  head redundancy (standard / cosine)\n");
  for (std::size_t l = 0; l < standard.study.collapse_block.size(); ++l)
    std::printf("%5zu  %8.3f / %-8.3f              %8.3f / %.3f\n", l, standard.study.collapse_block[l],
                cosine.study.collapse_block[l], standard.study.head_redundancy[l], cosine.study.head_redundancy[l]);
  return ok ? 0 : 1;
}
