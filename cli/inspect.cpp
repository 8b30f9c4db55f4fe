// `ellipse inspect`: what the attention layers of one trained model (a ViT or a GPT) do on one input, in
// numbers and pictures. Outputs are described in docs/study.md.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "cli/commands.hpp"
#include "cli/study_common.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "models/gpt_train.hpp"
#include "models/vit_train.hpp"

namespace ellipse::cli {

namespace {

using study::ordered_json;

struct InspectFlags {
  std::string model_dir, out_dir, text, data_dir{kFashionMnistDir};
  std::int64_t image = -1;
  Device device;
};

int run_inspect(const InspectFlags& flags) {
  use_device(flags.device);
  const std::string config_path = flags.model_dir + "/config.json";
  const auto config = nlohmann::json::parse(io::read_file(config_path, 1 << 20), nullptr, false);
  ELLIPSE_CHECK(config.is_object() && config.contains("model") && config["model"].is_string(),
                "{}: not a model config (no 'model' key)", config_path);
  const std::string kind = config["model"].get<std::string>();
  std::filesystem::create_directories(flags.out_dir);
  NoGradGuard no_grad;
  ordered_json summary;
  if (kind == "vit") {
    ELLIPSE_CHECK(flags.image >= 0 && flags.text.empty(), "inspect: {} holds a ViT: pass --image K", flags.model_dir);
    auto model = load_vit(flags.model_dir, flags.device);
    const LabeledImages test = load_fashion_mnist(flags.data_dir, "test");
    ELLIPSE_CHECK(flags.image < test.size(), "inspect: --image {} is out of range; the test set has {} images",
                  flags.image, test.size());
    const Tensor image = narrow(test.images, 0, flags.image, 1);
    const auto blocks = study::blocks_of(*model, model->config().n_layer);
    nn::BlockProbe probe(blocks);
    const Tensor logits = model->forward(image.to(flags.device));
    probe.collect();
    const Tensor maps = study::write_attention(flags.out_dir, blocks, "");
    study::write_class_attention(flags.out_dir, select(image, 0, 0), maps, model->config().patches_per_side(), "");
    figures::write_heatmap_png(flags.out_dir + "/image.png", select(image, 0, 0),
                               {.map = figures::Colormap::grey, .cell_px = 8, .range = figures::Range{0, 1}});
    const auto scores = logits.to_vector<float>();
    const auto predicted = std::max_element(scores.begin(), scores.end()) - scores.begin();
    const auto label = narrow(test.labels, 0, flags.image, 1).item();
    summary["image"] = flags.image;
    summary["label"] = fashion_mnist_class_names()[static_cast<std::size_t>(label)];
    summary["predicted"] = fashion_mnist_class_names()[static_cast<std::size_t>(predicted)];
    summary["layers"] = study::layer_json(probe.result());
    summary["m"] = study::write_metric(flags.out_dir, probe.result(), "");
  } else if (kind == "gpt") {
    ELLIPSE_CHECK(!flags.text.empty() && flags.image < 0, "inspect: {} holds a GPT: pass --text STR",
                  flags.model_dir);
    LoadedGPT loaded = load_gpt(flags.model_dir, flags.device);
    const auto ids = loaded.tokenizer.encode(decode_utf8(flags.text, "--text"));
    const auto n = static_cast<std::int64_t>(ids.size());
    ELLIPSE_CHECK(n >= 2 && n <= loaded.model->config().seq_len, "inspect: --text has {} characters; expected 2 to "
                  "the context length {}", n, loaded.model->config().seq_len);
    const auto blocks = study::blocks_of(*loaded.model, loaded.model->config().n_layer);
    nn::BlockProbe probe(blocks);
    loaded.model->forward(from_vector(ids, {1, n}, flags.device));
    probe.collect();
    study::write_attention(flags.out_dir, blocks, "");
    summary["text"] = flags.text;
    summary["layers"] = study::layer_json(probe.result());
    summary["m"] = study::write_metric(flags.out_dir, probe.result(), "");
  } else {
    fail("{}: 'model' is '{}'; inspect knows 'vit' and 'gpt'", config_path, kind);
  }
  io::write_file_atomic(flags.out_dir + "/summary.json", summary.dump(2) + "\n");
  fmt::print("{}\n", summary["layers"].dump());
  fmt::print("wrote attention.png, attention.npy, summary.json{} to {}\n",
             summary["m"].empty() ? "" : ", metric.png, metric.json", flags.out_dir);
  return 0;
}

}  // namespace

void add_inspect_command(CLI::App& app, Action& action) {
  auto inspect = std::make_shared<InspectFlags>();
  auto* i = app.add_subcommand("inspect", "Attention maps, the metric m and collapse of a trained model on one input");
  i->add_option("--model", inspect->model_dir, "Checkpoint directory (a ViT or a GPT)")->required()
      ->check(CLI::ExistingDirectory);
  auto* image = i->add_option("--image", inspect->image, "ViT: index of the test image")
                    ->check(CLI::Range(std::int64_t{0}, std::int64_t{100000000}));
  auto* text = i->add_option("--text", inspect->text, "GPT: the text to look at");
  image->excludes(text);
  i->add_option("--data", inspect->data_dir, "ViT: directory of the Fashion-MNIST .gz files")->capture_default_str();
  i->add_option("--out", inspect->out_dir, "Output directory")->required();
  add_device_option(*i, inspect->device);
  i->callback([&action, inspect] { action = [inspect] { return run_inspect(*inspect); }; });
}

}  // namespace ellipse::cli
