#pragma once
// The studies as library calls: train attention kinds side by side (same seeds, same data order), measure them
// and write summary.json, report.md and figures (docs/study.md describes every output), and the probe of one
// trained model on one input. The `ellipse study vit|gpt` and `ellipse inspect` commands fill these options and
// draw progress bars from the callbacks; research code calls the same functions.
//
// A study compares variants named in its `attention` option, the first being the baseline: registered attention
// kinds (nn::register_attention), so that a kind of one's own can be studied beside the built-in ones, and
// "elliptical-MODE" for elliptical attention with another estimator of m than the model's default (MODE:
// sequence, causal or random; the ViT's default is sequence, the GPT's causal). "elliptical-random" is the
// paper's ablation: m drawn at random, so that an effect can be laid to the estimated metric rather than to
// rescaling queries at all. Every variant is trained on the same seeds; for each measurement the report gives
// the mean and spread over seeds and the paired difference from the baseline with its 95% interval and a
// verdict (study/statistics.hpp).
//
// Runs live in out_dir/runs/VARIANT-seedN with their measurements in study.json: a study that was interrupted,
// or called again after its summary was deleted, trains and measures only what is missing. Under a communicator
// of several processes the runs are dealt out over the ranks (each trains its runs alone), and rank 0 writes
// the summary once every rank is done: the ranks must share out_dir (one machine, or a shared filesystem).
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "../core/device.hpp"
#include "../dist/communicator.hpp"
#include "../models/fashion_mnist.hpp"
#include "../models/train_run.hpp"
#include "../nn/analysis.hpp"
#include "../nn/attention.hpp"

namespace ellipse::study {

// What a study reports while it runs. Every member may be left empty.
struct StudyCallbacks {
  // Each training step of the run named `run` (e.g. "standard-seed0").
  std::function<void(const std::string& run, const TrainProgress& progress)> on_train_step{};
  // An evaluation during that run's training, as a line of text.
  std::function<void(const std::string& run, const std::string& line)> on_train_eval{};
  // Anything else worth a line: a run reused, a run's measurements, where the outputs went.
  std::function<void(const std::string& line)> on_message{};
};

struct StudyResult {
  // False when `only` restricted the study to one variant: its runs are measured, but summary.json, report.md
  // and the comparison figures wait for a call with every variant. Under several processes, true on every rank
  // once rank 0 has written them.
  bool summarized = false;
  std::string summary_path{}, report_path{};
};

// The ViT on Fashion-MNIST: clean accuracy, accuracy under Gaussian noise, FGSM and PGD-20, collapse, head
// redundancy and m per layer.
struct StudyVitOptions {
  std::string preset = "quick";                                  // quick (vit-xs, 5 epochs) or full (vit-s, 60)
  std::vector<std::string> attention{"standard", "elliptical"};  // variants (see above); the first is the baseline
  std::string only{};        // one of `attention`: train and measure only its runs (to split a study); empty: all
  std::int64_t seeds = 1;    // 1..100: seeds 0..seeds-1 per variant
  std::string data_dir{kFashionMnistDir};  // the Fashion-MNIST .gz files
  std::string out_dir = "runs/study-vit";  // must not hold a finished study (summary.json)
  Device device{};  // under several processes, each rank takes communicator->rank_device(device)
  dist::Communicator* communicator = nullptr;  // the processes sharing the runs; null: this process alone
};
StudyResult run_vit_study(const StudyVitOptions& options, const StudyCallbacks& callbacks = {});

// The character GPT: val loss, clean and with a fraction of the context's characters corrupted, collapse, head
// redundancy and m per layer.
struct StudyGptOptions {
  std::string preset = "quick";  // quick (gpt-s, 1000 steps), full (gpt-s, 5000) or smoke (gpt-tiny, 20: for tests)
  // Variants (see above); the first is the baseline. "elliptical" estimates m causally (from the prefix);
  // "elliptical-sequence" is the paper's estimator, which lets future characters into m.
  std::vector<std::string> attention{"standard", "elliptical"};
  std::string only{};                      // one of `attention`: train and measure only its runs; empty: all
  std::int64_t seeds = 1;                  // 1..100: seeds 0..seeds-1 per variant
  std::string text_path{};                 // a UTF-8 text file: the first 90% train, the last 10% val
  std::string out_dir = "runs/study-gpt";  // must not hold a finished study (summary.json)
  Device device{};  // under several processes, each rank takes communicator->rank_device(device)
  dist::Communicator* communicator = nullptr;  // the processes sharing the runs; null: this process alone
};
StudyResult run_gpt_study(const StudyGptOptions& options, const StudyCallbacks& callbacks = {});

// What the attention layers of one trained model do on one input: out_dir/attention.npy and attention.png, for
// a ViT the image and its class token's attention, metric.json and metric.png for elliptical layers, and
// summary.json.
struct InspectOptions {
  std::string model_dir{};                   // a checkpoint directory of a ViT or a GPT
  std::string out_dir{};
  std::optional<std::int64_t> image{};       // a ViT: the index of the Fashion-MNIST test image
  std::optional<std::string> text{};         // a GPT: 2 to seq_len characters of its vocabulary
  std::string data_dir{kFashionMnistDir};    // a ViT: the Fashion-MNIST .gz files
  Device device{};
};
struct InspectResult {
  std::string model{};     // "vit" or "gpt"
  nn::LayerStudy layers{};  // collapse, head redundancy and m of each layer on the input
};
InspectResult inspect_model(const InspectOptions& options);

}  // namespace ellipse::study
