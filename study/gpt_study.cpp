// run_gpt_study: trains the character GPT with attention kinds (standard and elliptical by default) side by
// side (same seeds, same data order) and compares the val loss, clean and with a corrupted context, representation
// collapse, head redundancy and the metric m. Outputs are described in docs/study.md.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>

#include "autograd/ops.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "models/gpt_train.hpp"
#include "study/common.hpp"

namespace ellipse::study {

namespace {

struct StudyPreset {
  std::string config;
  std::int64_t steps, eval_every;
  std::int64_t probe_windows;  // collapse, redundancy and m are averaged over the first N val windows
};

StudyPreset study_preset(const std::string& name) {
  if (name == "quick") return {.config = "gpt-s", .steps = 1000, .eval_every = 250, .probe_windows = 128};
  if (name == "full") return {.config = "gpt-s", .steps = 5000, .eval_every = 500, .probe_windows = 512};
  // For tests: a tiny model for a few steps, so that the whole study runs in seconds. Its numbers mean nothing.
  if (name == "smoke") return {.config = "gpt-tiny", .steps = 20, .eval_every = 10, .probe_windows = 16};
  fail("run_gpt_study: preset '{}' is unknown; expected quick, full or smoke", name);
}

// The fractions of val characters replaced, and their keys in summary.json.
const std::vector<double> kCorruption{0.015, 0.05, 0.1};

std::vector<std::string> corruption_keys() {
  std::vector<std::string> keys;
  for (double p : kCorruption) keys.push_back(fmt::format("{}", p));
  return keys;
}

// The sample line whose attention maps are drawn: the first characters of the val text, at most this many
// (and at most the context length).
constexpr std::int64_t kSampleLineLength = 64;

// What every run is evaluated on: the val split, clean and corrupted, the same for every variant of a seed.
struct ValText {
  CharTokenizer tokenizer;
  std::vector<std::int64_t> clean;
  std::vector<std::vector<std::vector<std::int64_t>>> corrupted;  // [seed][fraction]: the context streams
};

struct RunResult {
  double val_loss = 0, train_seconds = 0;
  std::vector<double> corrupted;  // in the order of kCorruption
  nn::LayerStudy layers;
};

// The sample line for a Markdown code span and the figures' titles: a newline shown as the two characters \n, a
// backquote (which would end the span) as '.
std::string printable_line(std::u32string_view line) {
  std::string out;
  for (char32_t c : line) out += c == U'\n' ? "\\n" : c == U'`' ? "'" : encode_utf8(std::u32string(1, c));
  return out;
}

RunResult study_run(const StudyGptOptions& study, const StudyPreset& preset, const StudyVariant& variant,
                    std::uint64_t seed, const ValText& val, bool draw, const StudyCallbacks& callbacks) {
  const std::string name = fmt::format("{}-seed{}", variant.name, seed);
  GPTTrainOptions preset_options;
  preset_options.text_path = study.text_path;
  preset_options.config = preset.config;
  preset_options.attention = variant.attention;
  preset_options.metric = variant.metric;
  preset_options.steps = preset.steps;
  preset_options.eval_every = preset.eval_every;
  GPTTrainOptions options = for_run(preset_options, seed, study.out_dir + "/runs/" + name, study.device);
  // Training and each measurement are cached in the run directory: the model is loaded only for what is missing.
  StudyRun<LoadedGPT> run(
      name, options.out_dir, "step", preset.steps,
      [&](bool resume) {
        options.resume = resume;
        train_gpt(options, train_step_callback(callbacks, name), [&](const EvalRecord& r) {
          tell_eval(callbacks, name, fmt::format("{} step {}: val_loss {:.4f}", name, r.step, r.val_loss));
        });
      },
      [&] {
        LoadedGPT loaded = load_gpt(options.out_dir, study.device);
        ELLIPSE_CHECK(loaded.tokenizer.vocab() == val.tokenizer.vocab(), "run_gpt_study: the model in {} was trained "
                      "on a text with another vocabulary than text_path {}; use another out_dir", options.out_dir,
                      study.text_path);
        return loaded;
      },
      callbacks);
  auto model = [&]() -> GPT& { return *run.loaded().model; };
  RunResult result;
  result.train_seconds = run.measure<double>("train_seconds", [&] { return run.training().train_seconds; });
  // The corrupted text is the context and the clean text the targets: a corrupted target is unpredictable by
  // construction and would add a term that swamps the difference between the models.
  result.val_loss = run.measure<double>("val_loss", [&] { return evaluate_gpt(model(), val.clean, val.clean); });
  const auto keys = corruption_keys();
  for (std::size_t i = 0; i < keys.size(); ++i)
    result.corrupted.push_back(run.measure<double>("corrupted " + keys[i], [&] {
      return evaluate_gpt(model(), val.corrupted[seed][i], val.clean);
    }));

  auto blocks = [&] { return blocks_of(model(), model().config().n_layer); };
  auto windows = [&](std::int64_t first, std::int64_t count) {
    const std::int64_t t = model().config().seq_len;
    const auto begin = val.clean.begin() + static_cast<std::ptrdiff_t>(first * t);
    return from_vector(std::vector<std::int64_t>(begin, begin + count * t), {count, t}, study.device);
  };
  auto probe_windows = [&] {
    return std::min(preset.probe_windows, static_cast<std::int64_t>(val.clean.size()) / model().config().seq_len);
  };
  result.layers = run.measure<nn::LayerStudy>("layers", [&] {
    return probe_blocks(blocks(), probe_windows(), 16,
                        [&](std::int64_t first, std::int64_t count) { model().forward(windows(first, count)); });
  });
  if (draw) {  // attention maps of the sample line, and m
    run.measure<bool>("figures", [&] {
      const std::string figures_dir = study.out_dir + "/figures";
      const std::string prefix = variant.name + "_";
      write_metric(figures_dir, result.layers, prefix,
                   fmt::format("the {} GPT (seed {}), averaged over the first {} val windows", variant.name, seed,
                               probe_windows()));
      const std::int64_t n = std::min(kSampleLineLength, model().config().seq_len);
      const std::vector<std::int64_t> line(val.clean.begin(), val.clean.begin() + n);
      const std::string subject = fmt::format("the {} GPT (seed {}) on the first {} characters of the val text, \"{}\"",
                                              variant.name, seed, n, printable_line(val.tokenizer.decode(line)));
      probe_blocks(
          blocks(), 1, 1, [&](std::int64_t, std::int64_t) { model().forward(from_vector(line, {1, n}, study.device)); },
          [&] { write_attention(figures_dir, blocks(), prefix, subject); });
      return true;
    });
  }
  tell(callbacks, fmt::format("{}: val_loss {:.4f}  corrupted {:.4f}  ({})", name, result.val_loss,
                              fmt::join(result.corrupted, " "), format_duration(result.train_seconds)));
  return result;
}

// The summary of one variant over seeds.
ordered_json summarize(const std::vector<RunResult>& runs) {
  std::vector<double> loss, seconds;
  std::vector<std::vector<double>> corrupted;
  std::vector<nn::LayerStudy> layers;
  for (const auto& r : runs) {
    loss.push_back(r.val_loss);
    corrupted.push_back(r.corrupted);
    seconds.push_back(r.train_seconds);
    layers.push_back(r.layers);
  }
  ordered_json json;
  json["val_loss"] = stat_json(loss);
  json["corrupted"] = keyed_stats(corrupted, corruption_keys());
  add_layer_stats(json, layers);
  json["train_seconds"] = stat_json(seconds);
  return json;
}

// "1.7504 ± 0.0031" for a loss statistic.
std::string nats(const ordered_json& stat) { return fmt::format("{:.4f} ± {:.4f}", mean_of(stat), std_of(stat)); }

// The increase of the val loss that the corruption of fraction `key` causes, per seed.
std::vector<double> corruption_cost(const ordered_json& variant, const std::string& key) {
  const auto clean = values_of(variant["val_loss"]);
  const auto corrupted = values_of(variant["corrupted"][key]);
  std::vector<double> cost;
  for (std::size_t i = 0; i < clean.size(); ++i) cost.push_back(corrupted[i] - clean[i]);
  return cost;
}

// Every measurement of a run, in the order of the report's table; `headline` keeps the ones that "What it shows"
// states in words.
std::vector<Measurement> study_measurements(bool headline) {
  const VerdictUnit loss{.scale = 1, .decimals = 4, .unit = "nats"};
  std::vector<Measurement> all{{"val_loss", "clean val loss", Better::lower, loss,
                                [](const ordered_json& v) { return values_of(v["val_loss"]); }}};
  const auto keys = corruption_keys();
  for (const auto& key : keys)
    if (!headline || key == keys.back())
      all.push_back({"corrupted " + key, fmt::format("val loss, p = {} corrupted", key), Better::lower, loss,
                     [key](const ordered_json& v) { return values_of(v["corrupted"][key]); }});
  for (const auto& key : keys)
    if (!headline || key == keys.back())
      all.push_back({"corruption cost " + key, fmt::format("what p = {} costs (corrupted - clean)", key), Better::lower,
                     loss, [key](const ordered_json& v) { return corruption_cost(v, key); }});
  for (auto& m : layer_measurements()) all.push_back(std::move(m));
  return all;
}

// What a reader must know about a variant before comparing its numbers; empty for the fair ones.
std::string caveat(const std::string& variant) {
  if (variant == "elliptical-sequence")
    return "its estimator averages over all tokens of a window, so m carries information from future characters "
           "into every position of a causal model: its val loss is not a fair comparison";
  if (variant == "elliptical-random")
    return "an ablation: m is drawn at random in every forward pass, so its losses vary from pass to pass";
  return "";
}

void write_study_figures(const std::string& dir, const ordered_json& summary, const std::vector<std::string>& variants) {
  figures::LineChart loss{.title = "Val loss with a fraction p of the context's characters replaced",
                          .x_label = "fraction p of val characters replaced", .y_label = "val loss (nats)"};
  loss.categories.push_back("0 (clean)");
  for (const auto& key : corruption_keys()) loss.categories.push_back(key);
  for (const auto& variant : variants)
    loss.series.push_back(clean_and_keyed_series(summary[variant], "val_loss", "corrupted", corruption_keys(), 1, variant));
  figures::write_line_chart_svg(dir + "/val_loss_vs_corruption.svg", loss);
  write_layer_charts(dir, summary, variants);
}

std::string study_report(const ordered_json& summary, const StudyPreset& preset, const StudyGptOptions& options,
                         const std::vector<std::string>& variants, const ValText& val, std::int64_t seq_len) {
  const std::int64_t windows = (static_cast<std::int64_t>(val.clean.size()) - 1) / seq_len;
  const std::string& baseline = variants.front();
  const ordered_json& comparisons = summary["comparisons"];
  const bool elliptical = std::find(variants.begin(), variants.end(), "elliptical") != variants.end();
  std::string md = fmt::format(
      "# {} attention: character GPT\n\n"
      "Preset `{}`: {} trained {} steps of batch {} on `{}` (first 90% train, last 10% val), {} seed(s) (0..{}), "
      "identical initialisation and data order per seed.{} Val losses (nats per character; lower is better) over the {} non-overlapping windows of {} "
      "characters of the val text; for \"p corrupted\", a fraction p of the val characters (exactly round(p N) "
      "positions, chosen uniformly, seeded by the seed) is replaced by a different character drawn uniformly from "
      "the vocabulary, in the context only: the targets stay the clean next characters. Collapse, head redundancy "
      "and m averaged over the first {} val windows. {} Values are mean ± sample standard deviation over seeds (± 0 "
      "with one seed); each variant is compared with `{}` seed by seed, with a 95% interval (Student's t over the "
      "seeds) for the mean difference: a verdict of better or worse means the interval excludes 0 and the mean "
      "difference does not round to 0 at the printed decimals. Each line is a test at the 5% level: among many lines "
      "about 1 in 20 shows a difference by chance where there is none.\n\n",
      kinds_title(variants), options.preset, preset.config, preset.steps, summary["batch"].get<std::int64_t>(),
      options.text_path, options.seeds, options.seeds - 1,
      elliptical ? " `elliptical` estimates m with the causal (prefix-mean) estimator." : "", windows, seq_len,
      std::min(preset.probe_windows, static_cast<std::int64_t>(val.clean.size()) / seq_len),
      how_it_ran(variants,
                 fmt::format("gpt --preset {} --seeds {}{} --data {}{} --out {}", options.preset, options.seeds,
                             kinds_flag(variants), options.text_path, device_flag(options.device), options.out_dir),
                 "run_gpt_study"),
      baseline);
  for (const auto& v : variants)
    if (!caveat(v).empty()) md += fmt::format("Note on `{}`: {}.\n\n", v, caveat(v));

  md += table_header(variants) + measurement_rows(summary, variants, study_measurements(false));
  md += layer_and_time_rows(summary, variants) + "\n";

  md += "## What it shows\n\n";
  const std::vector<ComparedPair> pairs = compared_pairs(variants);
  for (const auto& pair : pairs) {
    if (pair.key != pair.variant)
      md += "- `elliptical` against its ablation `elliptical-random` (m drawn at random): where `elliptical` is "
            "better here, the estimated metric helps, not merely rescaling the queries.\n";
    else if (!caveat(pair.variant).empty())
      md += fmt::format("- `{}`: {}.\n", pair.variant, caveat(pair.variant));
    for (const auto& m : study_measurements(true)) md += verdict_line(m, pair, comparisons, options.seeds) + "\n";
  }
  md += "\n## Paired differences\n\n" + comparison_tables(comparisons, pairs, study_measurements(false), options.seeds);

  const std::int64_t line_length = std::min(kSampleLineLength, seq_len);
  md += fmt::format(
      "## Figures\n\n"
      "- `figures/val_loss_vs_corruption.svg`: val loss, clean and with p = {} of the context corrupted, per "
      "variant, error bars = seed spread.\n"
      "- `figures/collapse_vs_layer.svg`: mean pairwise cosine similarity of tokens after each attention "
      "sublayer and each block.\n"
      "- `figures/head_redundancy_vs_layer.svg`: mean L2 distance between heads' attention maps per layer.\n"
      "- `figures/<elliptical variant>_metric.png`: m of seed 0, averaged over val windows and query positions: one "
      "row per (layer, head) from layer 1, head 0 down (labelled L1 H0, ...); one column per coordinate; colour 0 "
      "(dark) to 1 (yellow).\n"
      "- `figures/<variant>_attention.png`: attention maps of the sample line (the first {} characters of the val "
      "text: `{}`), rows = layers, columns = heads, queries down, keys across (nothing above the diagonal: the "
      "model is causal), each panel coloured from 0 to its own largest weight (printed above it).\n",
      fmt::join(corruption_keys(), ", "), line_length,
      printable_line(val.tokenizer.decode(std::vector<std::int64_t>(val.clean.begin(), val.clean.begin() + line_length))));
  return md;
}

}  // namespace

StudyResult run_gpt_study(const StudyGptOptions& options, const StudyCallbacks& callbacks) {
  const StudyPreset preset = study_preset(options.preset);
  const std::vector<StudyVariant> variants = check_study_options(
      "run_gpt_study", options.attention, nn::MetricMode::causal, options.seeds, options.only, options.out_dir);
  dist::Communicator& comm = options.communicator ? *options.communicator : dist::single_process();
  ELLIPSE_CHECK(std::filesystem::is_regular_file(options.text_path), "run_gpt_study: text_path '{}' is not a file; "
                "expected a UTF-8 text file", options.text_path);

  // The text as train_gpt reads it: the vocabulary of the whole text, the last 10% as val.
  ValText val;
  const std::u32string text = decode_utf8(io::read_file(options.text_path, std::uint64_t{1} << 31), options.text_path);
  val.tokenizer = CharTokenizer::from_text(text);
  val.clean = split_train_val(val.tokenizer.encode(text)).val;
  const GPTConfig config = gpt_preset(preset.config, val.tokenizer.size());
  ELLIPSE_CHECK(static_cast<std::int64_t>(val.clean.size()) > config.seq_len && val.tokenizer.size() >= 2,
                "run_gpt_study: text_path {}: its val part (the last 10%) has {} characters of {} distinct; expected "
                "more than the context length {} and at least 2 distinct", options.text_path, val.clean.size(),
                val.tokenizer.size(), config.seq_len);
  for (std::int64_t seed = 0; seed < options.seeds; ++seed) {
    val.corrupted.emplace_back();
    for (std::size_t i = 0; i < kCorruption.size(); ++i)
      val.corrupted.back().push_back(corrupt_characters(val.clean, kCorruption[i], val.tokenizer.size(),
                                                        mix64(static_cast<std::uint64_t>(seed), i)));
  }

  std::filesystem::create_directories(options.out_dir + "/figures");
  const StudyGptOptions this_rank = on_this_rank(options, comm);
  auto run = [&](const StudyRunSlot& slot) {
    return study_run(this_rank, preset, variants[slot.variant], static_cast<std::uint64_t>(slot.seed), val,
                     slot.seed == 0, callbacks);
  };
  const auto runs = run_study_runs(variants, options.seeds, options.only, options.out_dir, comm, run);
  if (!options.only.empty()) return {};

  const std::vector<std::string> names = names_of(variants);
  StudyResult result;
  if (!runs.empty()) {  // the process that writes the summary
    ordered_json summary{{"preset", options.preset}, {"seeds", options.seeds},   {"config", preset.config},
                         {"steps", preset.steps},     {"batch", config.batch},     {"data", options.text_path},
                         {"variants", names}};
    for (std::size_t v = 0; v < variants.size(); ++v) summary[names[v]] = summarize(runs[v]);
    summary["comparisons"] = compare_variants(summary, compared_pairs(names), study_measurements(false));
    write_study_figures(options.out_dir + "/figures", summary, names);
    std::vector<std::string> losses;
    for (const auto& name : names) losses.push_back(fmt::format("{} {}", name, nats(summary[name]["val_loss"])));
    result = finish_study(options.out_dir, summary, study_report(summary, preset, options, names, val, config.seq_len),
                          fmt::format("clean val loss: {}", fmt::join(losses, ", ")), callbacks);
  }
  return shared_result(options.out_dir, result, comm);
}

}  // namespace ellipse::study
