#pragma once
// What the studies and the probe of one model (study.hpp) share: the checks of their options, the probe loop,
// the figures drawn from a model's attention layers (attention maps, the class token's attention, the metric
// m), statistics over seeds, the parts of a study's summary and report that do not depend on the model
// (per-layer collapse and head redundancy, training time, verdict lines, the layer charts), and the training
// runs that a study reuses or resumes after an interruption, with the measurements taken on them. Internal to
// the library and its program: it needs nlohmann/json, which users of the installed library do not.
//
// A study compares named variants (e.g. "standard" and "elliptical"): summary.json holds one object per
// variant under its name, and the report's table one column per variant, in the order given.
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.hpp"
#include "dist/communicator.hpp"
#include "nn/analysis.hpp"
#include "study/figures.hpp"
#include "study/statistics.hpp"
#include "study/study.hpp"

namespace ellipse::study {

using nlohmann::ordered_json;

template <typename Model>
std::vector<nn::Block*> blocks_of(Model& model, std::int64_t layers) {
  std::vector<nn::Block*> blocks;
  for (std::int64_t i = 0; i < layers; ++i) blocks.push_back(&model.block(static_cast<std::size_t>(i)));
  return blocks;
}

// ---- options ----

// A model a study trains: an attention kind and, for elliptical attention, the estimator of m.
struct StudyVariant {
  std::string name;                      // as named in the options; also in summary.json and runs/NAME-seedN
  std::string attention;                 // a registered kind
  std::optional<nn::MetricMode> metric;  // unset: the model's default estimator
};

// The variants that a study's `attention` option names (study.hpp says how), after checking them and the other
// options; throws naming `function` unless the names are distinct variants, seeds is in 1..100, `only` is empty
// or one of the names, and out_dir is named and holds no finished study (summary.json). `default_metric` is the
// model's own estimator, which "elliptical" uses: "elliptical-" followed by its name would repeat that variant.
std::vector<StudyVariant> check_study_options(const std::string& function, const std::vector<std::string>& names,
                                              nn::MetricMode default_metric, std::int64_t seeds,
                                              const std::string& only, const std::string& out_dir);

// The runs of a study, seed-major: (seed 0, every variant), (seed 1, ...). Under a communicator of several
// processes, rank r trains and measures runs r, r + size, ...; `only` keeps one variant's runs.
struct StudyRunSlot {
  std::size_t variant = 0;
  std::int64_t seed = 0;
};
std::vector<StudyRunSlot> runs_of_this_process(const std::vector<StudyVariant>& variants, std::int64_t seeds,
                                               const std::string& only, const dist::Communicator& communicator);
std::vector<std::string> names_of(const std::vector<StudyVariant>& variants);

// A study's options as this process runs them: on its rank_device, so that the ranks of a machine asked for cuda
// train on their share of its GPUs.
template <typename Options>
Options on_this_rank(Options options, const dist::Communicator& communicator) {
  options.device = communicator.rank_device(options.device);
  return options;
}

// Throws unless out_dir/runs/NAME-seedN holds its measurements (study.json), naming the run and the directory.
void check_run_measured(const std::string& out_dir, const std::string& name, std::int64_t seed);

// Trains and measures this process's runs through run(slot), waits for every rank to finish its own, and returns on
// the process that writes the summary (rank 0) every run's result as [variant][seed]: the other ranks' runs come
// from their measurements cached in out_dir (the ranks must share it; check_run_measured says so otherwise). Empty
// on the other ranks, and when `only` restricts the study to one variant.
template <typename Run>
auto run_study_runs(const std::vector<StudyVariant>& variants, std::int64_t seeds, const std::string& only,
                    const std::string& out_dir, dist::Communicator& comm, Run&& run) {
  using Result = decltype(run(StudyRunSlot{}));
  std::map<std::pair<std::size_t, std::int64_t>, Result> mine;
  for (const auto& slot : runs_of_this_process(variants, seeds, only, comm))
    mine.emplace(std::pair(slot.variant, slot.seed), run(slot));
  comm.barrier();
  std::vector<std::vector<Result>> all;
  if (!only.empty() || comm.rank() != 0) return all;
  all.resize(variants.size());
  for (std::size_t v = 0; v < variants.size(); ++v)
    for (std::int64_t seed = 0; seed < seeds; ++seed) {
      if (const auto found = mine.find({v, seed}); found != mine.end()) {
        all[v].push_back(found->second);
        continue;
      }
      check_run_measured(out_dir, variants[v].name, seed);
      all[v].push_back(run(StudyRunSlot{.variant = v, .seed = seed}));
    }
  return all;
}

// The result on every process, once rank 0 has written the summary (`written`, on rank 0).
StudyResult shared_result(const std::string& out_dir, const StudyResult& written, dist::Communicator& comm);

// ---- probes ----

// Calls forward(first, count) over items [0, total) in batches of at most `batch`, without gradients and with
// the blocks' study hooks on, and returns the averages over all of them. `while_hooked`, when given, runs after
// the last batch while the hooks still hold its attention maps (write_attention reads them).
nn::LayerStudy probe_blocks(const std::vector<nn::Block*>& blocks, std::int64_t total, std::int64_t batch,
                            const std::function<void(std::int64_t first, std::int64_t count)>& forward,
                            const std::function<void()>& while_hooked = {});

// ---- figures of one model on one input ----
// Each PNG is titled with `subject`, which names the model and what it was shown, as the caller knows them:
// e.g. "the elliptical ViT (seed 0) on test image 0, a Sneaker". The rest of the title, the labels and the
// colour bar say what the figure shows.

// Writes {prefix}attention.npy [L, H, N, N] and {prefix}attention.png (rows: layers, columns: heads; each panel
// coloured from 0 to its own largest weight, printed above it) of batch item 0, after a forward pass with the
// blocks' study hooks on; returns the maps.
Tensor write_attention(const std::string& dir, const std::vector<nn::Block*>& blocks, const std::string& prefix,
                       const std::string& subject);

// The class token's attention over the patch grid, beside the image: {prefix}class_attention_layer{L}.png, the
// image and then one side x side map per head (each coloured from 0 to its own largest weight). maps:
// [L, H, N, N].
void write_class_attention(const std::string& dir, const Tensor& image, const Tensor& maps, std::int64_t side,
                           const std::string& prefix, const std::string& subject);

// m per elliptical layer and head: {prefix}metric.json, and {prefix}metric.png with one row per (layer, head)
// and one column per coordinate (rows in layer-major order; standard layers have none), coloured from 0 to 1.
// Writes nothing for a model without elliptical layers. Returns the JSON (an empty array then).
ordered_json write_metric(const std::string& dir, const nn::LayerStudy& study, const std::string& prefix,
                          const std::string& subject);

// {"collapse_attn": [...], "collapse_block": [...], "head_redundancy": [...]} of one study.
ordered_json layer_json(const nn::LayerStudy& study);

// ---- statistics over seeds ----

// {"mean", "std", "values"}.
ordered_json stat_json(const std::vector<double>& values);
// per_seed[seed][i] -> {keys[i]: stat_json over seeds}.
ordered_json keyed_stats(const std::vector<std::vector<double>>& per_seed, const std::vector<std::string>& keys);
// Adds collapse_attn, collapse_block and head_redundancy over seeds: {"mean": [per layer], "std": [per layer],
// "values": [per seed: [per layer]]}.
void add_layer_stats(ordered_json& variant, const std::vector<nn::LayerStudy>& per_seed);

double mean_of(const ordered_json& stat);
double std_of(const ordered_json& stat);
// A statistic's per-seed values.
std::vector<double> values_of(const ordered_json& stat);
// Per seed, the mean over layers of a layer statistic (e.g. variant["collapse_block"]).
std::vector<double> layer_means(const ordered_json& layer_stat);

// How the report prints a measurement's values and differences: multiplied by `scale`, with `decimals`,
// followed by `unit` (may be empty).
struct VerdictUnit {
  double scale = 1;
  int decimals = 2;
  std::string unit{};
};

// One line of a study's table and of its paired comparisons.
struct Measurement {
  std::string key;    // its key under "comparisons" in summary.json
  std::string label;  // the report's words for it
  Better better;
  VerdictUnit unit;
  std::function<std::vector<double>(const ordered_json& variant)> per_seed;  // from the variant's summary
};

// The measurements of every study's layers, each a mean over layers: collapse of the attention and the block
// outputs (lower is better: tokens stay distinct) and head redundancy as the L2 distance between heads' maps
// (higher is better: heads differ).
std::vector<Measurement> layer_measurements();

// Two variants compared seed by seed: `variant` minus `reference`.
struct ComparedPair {
  std::string variant, reference;
  std::string key;  // under "comparisons" in summary.json: the variant's name against the baseline, else "A vs B"
};
// Each variant after the first (the baseline) against the baseline; and, when both are there and neither is the
// baseline, "elliptical" against its ablation "elliptical-random": what the estimated metric adds to rescaling
// queries at all.
std::vector<ComparedPair> compared_pairs(const std::vector<std::string>& variants);

// {pair key: {measurement key: {"differences": [per seed], "mean", "std", "ci95": [lo, hi] (null for one seed),
// "verdict"}}}. A mean difference that rounds to 0 at the measurement's printed decimals counts as none.
ordered_json compare_variants(const ordered_json& summary, const std::vector<ComparedPair>& pairs,
                              const std::vector<Measurement>& measurements);

// ---- the report ----

// " --device cuda:0" for the report's command line; nothing for the CPU (the default).
std::string device_flag(const Device& device);

// The report's title words for the kinds compared: "Standard vs elliptical" for {"standard", "elliptical"}.
std::string kinds_title(const std::vector<std::string>& kinds);

// " --kinds a,b,c" for a command line, or nothing for the default variants (standard and elliptical).
std::string kinds_flag(const std::vector<std::string>& variants);
// How a report says the study ran: "Command: `ellipse study ARGS`." when the command can name its variants
// (standard, elliptical and elliptical-MODE), and the library call `function` with its variants otherwise.
std::string how_it_ran(const std::vector<std::string>& variants, const std::string& args, const std::string& function);

// "| metric | standard | elliptical |\n|---|---|---|\n" for variants {"standard", "elliptical"}.
std::string table_header(const std::vector<std::string>& variants);
// "| label | cells[0] | cells[1] |\n".
std::string table_row(const std::string& label, const std::vector<std::string>& cells);
// The rows that every study has: collapse (attention and block output) and head redundancy per layer (means
// over seeds), and the training time.
std::string layer_and_time_rows(const ordered_json& summary, const std::vector<std::string>& variants);

// The table's rows for `measurements`: mean ± standard deviation over seeds per variant.
std::string measurement_rows(const ordered_json& summary, const std::vector<std::string>& variants,
                             const std::vector<Measurement>& measurements);
// Per pair, a table of its paired differences: the mean difference, its 95% interval and the verdict of each
// measurement. `comparisons` is compare_variants' result.
std::string comparison_tables(const ordered_json& comparisons, const std::vector<ComparedPair>& pairs,
                              const std::vector<Measurement>& measurements, std::int64_t seeds);
// One sentence on a measurement of a pair, e.g. "- clean test accuracy (%) (higher is better): elliptical +0.20
// points vs standard, 95% interval [-0.31, +0.71] over 3 seeds: **no difference detected**."
std::string verdict_line(const Measurement& measurement, const ComparedPair& pair, const ordered_json& comparisons,
                         std::int64_t seeds);

// Writes out_dir/report.md and then summary.json (last: it marks the study finished), tells `headline` and where
// the outputs went, and returns their paths.
StudyResult finish_study(const std::string& out_dir, const ordered_json& summary, const std::string& report,
                         const std::string& headline, const StudyCallbacks& callbacks);

// ---- figures of a study ----

// A series over categories: the clean value `summary_variant[clean_key]` first, then
// `summary_variant[keyed_key][k]` for each k in keys; each a statistic, multiplied by `scale`, with its
// seed spread as the error bar.
figures::Series clean_and_keyed_series(const ordered_json& summary_variant, const std::string& clean_key,
                                       const std::string& keyed_key, const std::vector<std::string>& keys,
                                       double scale, const std::string& label);
// collapse_vs_layer.svg and head_redundancy_vs_layer.svg in `dir`, one line per variant (two for collapse:
// the attention and the block output).
void write_layer_charts(const std::string& dir, const ordered_json& summary, const std::vector<std::string>& variants);

// ---- training runs that survive an interruption ----

struct StudyTraining {
  ordered_json last_record;  // the run's last metrics.jsonl line (up to its committed checkpoint)
  double train_seconds = 0;  // its elapsed_s: the training time, every part of an interrupted run included
};

// Passes `line` to callbacks.on_message, when there is one.
void tell(const StudyCallbacks& callbacks, const std::string& line);

// The trainer's step callback for the run `name`: forwards each step to callbacks.on_train_step.
std::function<void(const TrainProgress&)> train_step_callback(const StudyCallbacks& callbacks, const std::string& name);
// Passes an evaluation line of the run `name` to callbacks.on_train_eval, when there is one.
void tell_eval(const StudyCallbacks& callbacks, const std::string& name, const std::string& line);

// One training run of a study, in `run_dir`. A run that finished earlier (its last metrics line has
// `done_key` == `done_value`, e.g. "epoch" 5 or "step" 2000) is reused, telling "NAME: finished earlier,
// reusing DIR"; otherwise `train(resume)` runs the trainer, resuming when the directory holds a checkpoint.
StudyTraining train_or_reuse(const std::string& name, const std::string& run_dir, const std::string& done_key,
                             std::int64_t done_value, const std::function<void(bool resume)>& train,
                             const StudyCallbacks& callbacks);

// ---- measurements that survive an interruption ----

// One run's measurements by name, in a JSON file that is rewritten (atomically) after each new one. A study
// stopped during its evaluations takes up where it stopped, and a run directory that holds this file with
// every measurement needs neither its checkpoint nor its model: long presets can be finished in parts, on
// different days or machines. Delete the file to measure again.
class MeasurementCache {
 public:
  // Reads `path` when it exists; a file that is not a JSON object is an error naming it.
  explicit MeasurementCache(std::string path);

  // The value stored under `key`, or measure()'s result, stored first.
  template <typename T, typename Measure>
  T get(const std::string& key, Measure&& measure) {
    if (const auto found = values_.find(key); found != values_.end()) {
      try {
        return found->template get<T>();
      } catch (const ordered_json::exception&) {
        bad_entry(key);
      }
    }
    T value = std::forward<Measure>(measure)();
    values_[key] = value;
    save();
    return value;
  }

 private:
  [[noreturn]] void bad_entry(const std::string& key) const;
  void save() const;
  std::string path_;
  ordered_json values_ = ordered_json::object();
};

// The trainer's options of a study's run: `options` with the run's seed, its directory and the device.
template <typename TrainOptions>
TrainOptions for_run(TrainOptions options, std::uint64_t seed, std::string run_dir, Device device) {
  options.seed = seed;
  options.out_dir = std::move(run_dir);
  options.device = device;
  return options;
}

// A run of a study: its training (train_or_reuse with these arguments), its loaded model and its measurements
// (a MeasurementCache in run_dir/study.json). The training and the model are taken up only when a measurement
// missing from the cache needs them (the measurements ask for the training first).
template <typename Loaded>
class StudyRun {
 public:
  StudyRun(std::string name, std::string run_dir, std::string done_key, std::int64_t done_value,
           std::function<void(bool resume)> train, std::function<Loaded()> load, const StudyCallbacks& callbacks)
      : name_(std::move(name)), run_dir_(std::move(run_dir)), done_key_(std::move(done_key)), done_value_(done_value),
        train_(std::move(train)), load_(std::move(load)), callbacks_(callbacks), cache_(run_dir_ + "/study.json") {}

  const StudyTraining& training() {
    if (!training_) training_ = train_or_reuse(name_, run_dir_, done_key_, done_value_, train_, callbacks_);
    return *training_;
  }
  Loaded& loaded() {
    if (!loaded_) loaded_.emplace(load_());
    return *loaded_;
  }
  // The measurement `key` from the cache, or compute()'s result, cached first.
  template <typename T, typename Compute>
  T measure(const std::string& key, Compute&& compute) {
    return cache_.template get<T>(key, std::forward<Compute>(compute));
  }

 private:
  std::string name_, run_dir_, done_key_;
  std::int64_t done_value_;
  std::function<void(bool resume)> train_;
  std::function<Loaded()> load_;
  const StudyCallbacks& callbacks_;
  MeasurementCache cache_;
  std::optional<StudyTraining> training_;
  std::optional<Loaded> loaded_;
};

}  // namespace ellipse::study

namespace ellipse::nn {
// For MeasurementCache (found by argument-dependent lookup).
void to_json(nlohmann::ordered_json& json, const LayerStudy& study);
void from_json(const nlohmann::ordered_json& json, LayerStudy& study);
}  // namespace ellipse::nn
