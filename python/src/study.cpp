// ellipse.study: the studies (`ellipse study vit|gpt`) and the probe of one model (`ellipse inspect`) as functions.
// They run with the GIL released; on_message receives the lines the program prints.
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "study/study.hpp"

namespace ellipse::python {
namespace {

using namespace nb::literals;
using Message = std::function<void(const std::string&)>;

// Passes the study's lines to on_message, under the GIL.
study::StudyCallbacks callbacks(const Message& on_message) {
  study::StudyCallbacks result;
  if (!on_message) return result;
  result.on_message = [&on_message](const std::string& line) {
    nb::gil_scoped_acquire gil;
    on_message(line);
  };
  result.on_train_eval = [&on_message](const std::string& run, const std::string& line) {
    nb::gil_scoped_acquire gil;
    on_message(run + ": " + line);
  };
  return result;
}

// The options both studies share, then the study itself with the GIL released; its result as a dict.
template <typename Options, typename Study>
nb::dict run_study(Options& options, const std::string& preset, const std::vector<std::string>& attention,
                   std::int64_t seeds, const std::string& only, Device device, const Message& on_message,
                   Study study) {
  options.preset = preset;
  options.attention = attention;
  options.seeds = seeds;
  options.only = only;
  options.device = device;
  study::StudyResult result;
  {
    nb::gil_scoped_release release;
    result = study(options, callbacks(on_message));
  }
  nb::dict out;
  out["summarized"] = result.summarized;
  out["summary_path"] = result.summary_path;
  out["report_path"] = result.report_path;
  return out;
}

}  // namespace

void bind_study(nb::module_& m) {
  m.def(
      "study_gpt",
      [](const std::string& text_path, const std::string& out_dir, const std::string& preset,
         const std::vector<std::string>& attention, std::int64_t seeds, const std::string& only, Device device,
         const Message& on_message) {
        study::StudyGptOptions options;
        options.text_path = text_path;
        options.out_dir = out_dir;
        return run_study(options, preset, attention, seeds, only, device, on_message, study::run_gpt_study);
      },
      "text_path"_a, "out_dir"_a, "preset"_a = "quick",
      "attention"_a = std::vector<std::string>{"standard", "elliptical"}, "seeds"_a = 1, "only"_a = "",
      "device"_a = Device::cpu(), "on_message"_a = nb::none(),
      "`ellipse study gpt`: trains the attention variants (the first is the baseline) on the text with the same "
      "seeds and compares them; preset 'quick', 'full' or 'smoke'. Returns summarized, summary_path, report_path.");
  m.def(
      "study_vit",
      [](const std::string& out_dir, const std::string& data_dir, const std::string& preset,
         const std::vector<std::string>& attention, std::int64_t seeds, const std::string& only, Device device,
         const Message& on_message) {
        study::StudyVitOptions options;
        options.out_dir = out_dir;
        options.data_dir = data_dir;
        return run_study(options, preset, attention, seeds, only, device, on_message, study::run_vit_study);
      },
      "out_dir"_a, "data_dir"_a = std::string(kFashionMnistDir), "preset"_a = "quick",
      "attention"_a = std::vector<std::string>{"standard", "elliptical"}, "seeds"_a = 1, "only"_a = "",
      "device"_a = Device::cpu(), "on_message"_a = nb::none(),
      "`ellipse study vit`: the ViT variants on Fashion-MNIST, clean and under noise and attacks; preset 'quick' "
      "or 'full'. Returns summarized, summary_path, report_path.");
  m.def(
      "inspect",
      [](const std::string& model_dir, const std::string& out_dir, std::optional<std::int64_t> image,
         std::optional<std::string> text, const std::string& data_dir, Device device) {
        study::InspectResult result;
        {
          nb::gil_scoped_release release;
          result = study::inspect_model({model_dir, out_dir, image, text, data_dir, device});
        }
        nb::dict out;
        out["model"] = result.model;
        out["collapse_attn"] = result.layers.collapse_attn;
        out["collapse_block"] = result.layers.collapse_block;
        out["head_redundancy"] = result.layers.head_redundancy;
        out["mean_metric"] = result.layers.mean_metric;
        return out;
      },
      "model_dir"_a, "out_dir"_a, "image"_a = nb::none(), "text"_a = nb::none(),
      "data_dir"_a = std::string(kFashionMnistDir), "device"_a = Device::cpu(),
      "`ellipse inspect`: a model's attention maps, metric and measures on one input (a ViT's test image or a GPT's "
      "text), written to out_dir; returns the model kind and per layer collapse, head redundancy and the mean metric m "
      "[head][coordinate] (empty for standard layers).");
}

}  // namespace ellipse::python
