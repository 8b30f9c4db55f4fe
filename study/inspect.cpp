// inspect_model: what the attention layers of one trained model (a ViT or a GPT) do on one input, in numbers and
// pictures. Outputs are described in docs/study.md.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "autograd/ops.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "models/gpt_train.hpp"
#include "models/vit_train.hpp"
#include "study/common.hpp"

namespace ellipse::study {

namespace {

// The ViT's figures and summary for test image options.image; returns the layers' measures.
nn::LayerStudy inspect_vit(const InspectOptions& options, ordered_json& summary) {
  ELLIPSE_CHECK(options.image && !options.text, "inspect_model: {} holds a ViT: set image (and not text)",
                options.model_dir);
  const std::int64_t index = *options.image;
  auto model = load_vit(options.model_dir, options.device);
  const LabeledImages test = load_fashion_mnist(options.data_dir, "test");
  ELLIPSE_CHECK(index >= 0 && index < test.size(), "inspect_model: image {} is out of range; the test set has {} images",
                index, test.size());
  const Tensor image = narrow(test.images, 0, index, 1);
  const auto blocks = blocks_of(*model, model->config().n_layer);
  Tensor logits;
  const nn::LayerStudy layers = probe_blocks(
      blocks, 1, 1, [&](std::int64_t, std::int64_t) { logits = model->forward(image.to(options.device)); },
      [&] {
        const Tensor maps = write_attention(options.out_dir, blocks, "");
        write_class_attention(options.out_dir, select(image, 0, 0), maps, model->config().patches_per_side(), "");
      });
  figures::write_heatmap_png(options.out_dir + "/image.png", select(image, 0, 0),
                             {.map = figures::Colormap::grey, .cell_px = 8, .range = figures::Range{0, 1}});
  const auto scores = logits.to_vector<float>();
  const auto predicted = std::max_element(scores.begin(), scores.end()) - scores.begin();
  const auto label = narrow(test.labels, 0, index, 1).item();
  summary["image"] = index;
  summary["label"] = fashion_mnist_class_names()[static_cast<std::size_t>(label)];
  summary["predicted"] = fashion_mnist_class_names()[static_cast<std::size_t>(predicted)];
  return layers;
}

// The GPT's figures and summary for options.text; returns the layers' measures.
nn::LayerStudy inspect_gpt(const InspectOptions& options, ordered_json& summary) {
  ELLIPSE_CHECK(options.text && !options.image, "inspect_model: {} holds a GPT: set text (and not image)",
                options.model_dir);
  LoadedGPT loaded = load_gpt(options.model_dir, options.device);
  const auto ids = loaded.tokenizer.encode(decode_utf8(*options.text, "text"));
  const auto n = static_cast<std::int64_t>(ids.size());
  ELLIPSE_CHECK(n >= 2 && n <= loaded.model->config().seq_len, "inspect_model: text has {} characters; expected 2 to "
                "the context length {}", n, loaded.model->config().seq_len);
  const auto blocks = blocks_of(*loaded.model, loaded.model->config().n_layer);
  const nn::LayerStudy layers = probe_blocks(
      blocks, 1, 1, [&](std::int64_t, std::int64_t) { loaded.model->forward(from_vector(ids, {1, n}, options.device)); },
      [&] { write_attention(options.out_dir, blocks, ""); });
  summary["text"] = *options.text;
  return layers;
}

}  // namespace

InspectResult inspect_model(const InspectOptions& options) {
  ELLIPSE_CHECK(!options.out_dir.empty(), "inspect_model: out_dir is empty; expected the output directory");
  const std::string config_path = options.model_dir + "/config.json";
  const auto config = nlohmann::json::parse(io::read_file(config_path, 1 << 20), nullptr, false);
  ELLIPSE_CHECK(config.is_object() && config.contains("model") && config["model"].is_string(),
                "{}: not a model config (no 'model' key)", config_path);
  InspectResult result{.model = config["model"].get<std::string>(), .layers = {}};
  ELLIPSE_CHECK(result.model == "vit" || result.model == "gpt", "{}: 'model' is '{}'; inspect_model knows 'vit' and "
                "'gpt'", config_path, result.model);
  std::filesystem::create_directories(options.out_dir);
  ordered_json summary;
  result.layers = result.model == "vit" ? inspect_vit(options, summary) : inspect_gpt(options, summary);
  summary["layers"] = layer_json(result.layers);
  summary["m"] = write_metric(options.out_dir, result.layers, "");
  io::write_file_atomic(options.out_dir + "/summary.json", summary.dump(2) + "\n");
  return result;
}

}  // namespace ellipse::study
