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

// What inspecting one model found: its layers' measures, and the model and input in words for the figures' titles.
struct Inspected {
  nn::LayerStudy layers;
  std::string subject;
};

// The ViT's figures and summary for test image options.image.
Inspected inspect_vit(const InspectOptions& options, ordered_json& summary) {
  ELLIPSE_CHECK(options.image && !options.text, "inspect_model: {} holds a ViT: set image (and not text)",
                options.model_dir);
  const std::int64_t index = *options.image;
  auto model = load_vit(options.model_dir, options.device);
  const LabeledImages test = load_fashion_mnist(options.data_dir, "test");
  ELLIPSE_CHECK(index >= 0 && index < test.size(), "inspect_model: image {} is out of range; the test set has {} images",
                index, test.size());
  const Tensor image = narrow(test.images, 0, index, 1);
  const auto& names = fashion_mnist_class_names();
  const std::string label = names[static_cast<std::size_t>(narrow(test.labels, 0, index, 1).item())];
  const auto blocks = blocks_of(*model, model->config().n_layer);
  const std::int64_t side = model->config().patches_per_side();
  std::string predicted;
  Inspected inspected;
  inspected.layers = probe_blocks(
      blocks, 1, 1,
      [&](std::int64_t, std::int64_t) {
        const auto scores = model->forward(image.to(options.device)).to_vector<float>();
        predicted = names[static_cast<std::size_t>(std::max_element(scores.begin(), scores.end()) - scores.begin())];
      },
      [&] {
        inspected.subject = fmt::format("the {} {} in {} on test image {} ({}, predicted {})",
                                        model->config().attention, model->config().name, options.model_dir, index,
                                        label, predicted);
        const Tensor maps = write_attention(options.out_dir, blocks, "",
                                            fmt::format("{}; token 0 is the class token, 1 to {} the patches row by row",
                                                        inspected.subject, side * side));
        write_class_attention(options.out_dir, select(image, 0, 0), maps, side, "", inspected.subject);
      });
  figures::write_heatmap_png(
      options.out_dir + "/image.png", select(image, 0, 0),
      {.map = figures::Colormap::grey, .cell_px = 8, .range = figures::Range{0, 1},
       .labels = {.title = fmt::format("Test image {}: {}\nThe model predicts {}", index, label, predicted),
                  .colour_label = "pixel value"}});
  summary["image"] = index;
  summary["label"] = label;
  summary["predicted"] = predicted;
  return inspected;
}

// The GPT's figures and summary for options.text.
Inspected inspect_gpt(const InspectOptions& options, ordered_json& summary) {
  ELLIPSE_CHECK(options.text && !options.image, "inspect_model: {} holds a GPT: set text (and not image)",
                options.model_dir);
  LoadedGPT loaded = load_gpt(options.model_dir, options.device);
  const auto ids = loaded.tokenizer.encode(decode_utf8(*options.text, "text"));
  const auto n = static_cast<std::int64_t>(ids.size());
  ELLIPSE_CHECK(n >= 2 && n <= loaded.model->config().seq_len, "inspect_model: text has {} characters; expected 2 to "
                "the context length {}", n, loaded.model->config().seq_len);
  const auto blocks = blocks_of(*loaded.model, loaded.model->config().n_layer);
  std::string shown;  // the text on one line
  for (const char c : *options.text) shown += c == '\n' ? std::string("\\n") : std::string(1, c);
  Inspected inspected{.layers = {},
                      .subject = fmt::format("the {} {} in {} on the text \"{}\"", loaded.model->config().attention,
                                             loaded.model->config().name, options.model_dir, shown)};
  inspected.layers = probe_blocks(
      blocks, 1, 1, [&](std::int64_t, std::int64_t) { loaded.model->forward(from_vector(ids, {1, n}, options.device)); },
      [&] { write_attention(options.out_dir, blocks, "", inspected.subject); });
  summary["text"] = *options.text;
  return inspected;
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
  const Inspected inspected = result.model == "vit" ? inspect_vit(options, summary) : inspect_gpt(options, summary);
  result.layers = inspected.layers;
  summary["layers"] = layer_json(result.layers);
  summary["m"] = write_metric(options.out_dir, result.layers, "", inspected.subject);
  io::write_file_atomic(options.out_dir + "/summary.json", summary.dump(2) + "\n");
  return result;
}

}  // namespace ellipse::study
