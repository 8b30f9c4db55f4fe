// `ellipse inspect`: the flags of the library's probe of one trained model (study::inspect_model).
#include <fmt/format.h>

#include <algorithm>
#include <memory>

#include "cli/commands.hpp"
#include "study/common.hpp"

namespace ellipse::cli {

namespace {

struct InspectFlags {
  std::string model_dir, out_dir, text, data_dir{kFashionMnistDir};
  std::int64_t image = -1;
  Device device;
};

int run_inspect(const InspectFlags& flags) {
  use_device(flags.device);
  study::InspectOptions options{.model_dir = flags.model_dir, .out_dir = flags.out_dir, .image = std::nullopt,
                                .text = std::nullopt, .data_dir = flags.data_dir, .device = flags.device};
  if (flags.image >= 0) options.image = flags.image;
  if (!flags.text.empty()) options.text = flags.text;
  const study::InspectResult result = study::inspect_model(options);
  fmt::print("{}\n", study::layer_json(result.layers).dump());
  const bool has_metric = std::any_of(result.layers.mean_metric.begin(), result.layers.mean_metric.end(),
                                      [](const auto& layer) { return !layer.empty(); });
  fmt::print("wrote attention.png, attention.npy, summary.json{} to {}\n",
             has_metric ? ", metric.png, metric.json" : "", flags.out_dir);
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
