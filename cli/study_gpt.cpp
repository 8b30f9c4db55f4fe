// `ellipse study gpt`: trains the character GPT with standard and elliptical attention side by side (same
// seeds, same data order) and compares the val loss, clean and with a corrupted context, representation
// collapse, head redundancy and the metric m. Outputs are described in docs/study.md.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "cli/study_common.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "models/gpt_train.hpp"

namespace ellipse::cli {

namespace {

using namespace study;

constexpr const char* kDefaultText = "../shared/data/tinyshakespeare.txt";

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
  fail("study gpt: unknown preset '{}'; expected quick, full or smoke", name);
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

// One trained model of the study. "standard" and "elliptical" (the causal estimator of m: the honest one for a
// causal model) always run; --m-modes adds "elliptical-sequence" and "elliptical-random".
struct Variant {
  std::string name;
  std::string attention;
  std::optional<nn::MetricMode> metric;  // elliptical only
};

std::vector<Variant> study_variants(const std::vector<std::string>& m_modes) {
  std::vector<Variant> variants{{"standard", "standard", std::nullopt},
                                {"elliptical", "elliptical", nn::MetricMode::causal}};
  // In a fixed order whatever the order on the command line; causal is always there.
  for (const auto mode : {nn::MetricMode::sequence, nn::MetricMode::random}) {
    const std::string name(nn::metric_mode_name(mode));
    if (std::find(m_modes.begin(), m_modes.end(), name) != m_modes.end())
      variants.push_back({"elliptical-" + name, "elliptical", mode});
  }
  return variants;
}

std::vector<std::string> names_of(const std::vector<Variant>& variants) {
  std::vector<std::string> names;
  for (const auto& v : variants) names.push_back(v.name);
  return names;
}

struct StudyFlags {
  std::string preset = "quick", out_dir = "runs/study-gpt", text_path = kDefaultText;
  std::vector<std::string> m_modes;
  std::int64_t seeds = 1;
  Device device;
};

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

RunResult study_run(const StudyFlags& flags, const StudyPreset& preset, const Variant& variant, std::uint64_t seed,
                    const ValText& val, bool draw) {
  const std::string name = fmt::format("{}-seed{}", variant.name, seed);
  GPTTrainOptions options;
  options.text_path = flags.text_path;
  options.config = preset.config;
  options.attention = variant.attention;
  options.metric = variant.metric;
  options.steps = preset.steps;
  options.eval_every = preset.eval_every;
  options.seed = seed;
  options.out_dir = flags.out_dir + "/runs/" + name;
  options.device = flags.device;
  RunResult result;
  const StudyTraining trained = train_or_reuse(name, options.out_dir, "step", preset.steps, [&](bool resume) {
    options.resume = resume;
    std::optional<Progress> bar;
    train_gpt(
        options,
        [&](const TrainProgress& p) {
          if (!bar) bar.emplace(p.steps, 100);
          bar->update(p.step, p.elapsed_s, fmt::format("{}  loss {:.4f}  {:.0f} tok/s", name, p.loss, p.items_per_s));
        },
        [&](const EvalRecord& r) { bar->line(fmt::format("{} step {}: val_loss {:.4f}", name, r.step, r.val_loss)); });
  });
  result.train_seconds = trained.train_seconds;

  LoadedGPT loaded = load_gpt(options.out_dir, flags.device);
  GPT& model = *loaded.model;
  ELLIPSE_CHECK(loaded.tokenizer.vocab() == val.tokenizer.vocab(), "study gpt: the model in {} was trained on a text "
                "with another vocabulary than --data {}; use another --out", options.out_dir, flags.text_path);
  // The corrupted text is the context and the clean text the targets: a corrupted target is unpredictable by
  // construction and would add a term that swamps the difference between the models.
  result.val_loss = evaluate_gpt(model, val.clean, val.clean);
  for (const auto& context : val.corrupted[seed]) result.corrupted.push_back(evaluate_gpt(model, context, val.clean));

  const std::int64_t t = model.config().seq_len;
  const auto blocks = blocks_of(model, model.config().n_layer);
  {
    NoGradGuard no_grad;
    nn::BlockProbe probe(blocks);
    const std::int64_t windows = std::min(preset.probe_windows, static_cast<std::int64_t>(val.clean.size()) / t);
    for (std::int64_t first = 0; first < windows; first += 16) {
      const std::int64_t count = std::min<std::int64_t>(16, windows - first);
      const auto begin = val.clean.begin() + static_cast<std::ptrdiff_t>(first * t);
      model.forward(from_vector(std::vector<std::int64_t>(begin, begin + count * t), {count, t}, flags.device));
      probe.collect();
    }
    result.layers = probe.result();
  }
  if (draw) {  // attention maps of the sample line, and m (after `probe` is gone: probes must not overlap)
    NoGradGuard no_grad;
    const std::string figures_dir = flags.out_dir + "/figures";
    const std::string prefix = variant.name + "_";
    write_metric(figures_dir, result.layers, prefix);
    nn::BlockProbe one(blocks);
    const std::int64_t n = std::min(kSampleLineLength, t);
    model.forward(
        from_vector(std::vector<std::int64_t>(val.clean.begin(), val.clean.begin() + n), {1, n}, flags.device));
    write_attention(figures_dir, blocks, prefix);
  }
  fmt::print("{}: val_loss {:.4f}  corrupted {:.4f}  ({})\n", name, result.val_loss, fmt::join(result.corrupted, " "),
             format_duration(result.train_seconds));
  std::fflush(stdout);
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

// The increase of the val loss that the corruption of fraction `key` causes, per seed, as a statistic.
ordered_json corruption_cost(const ordered_json& variant, const std::string& key) {
  const auto clean = variant["val_loss"]["values"].get<std::vector<double>>();
  const auto corrupted = variant["corrupted"][key]["values"].get<std::vector<double>>();
  std::vector<double> cost;
  for (std::size_t i = 0; i < clean.size(); ++i) cost.push_back(corrupted[i] - clean[i]);
  return stat_json(cost);
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

// The sample line for a Markdown code span: a newline shown as the two characters \n, a backquote (which would
// end the span) as '.
std::string printable_line(std::u32string_view line) {
  std::string out;
  for (char32_t c : line) out += c == U'\n' ? "\\n" : c == U'`' ? "'" : encode_utf8(std::u32string(1, c));
  return out;
}

// " --m-modes sequence,random" for the variants beyond standard and elliptical (causal); empty without them.
std::string m_modes_flag(const std::vector<std::string>& variants) {
  std::vector<std::string> modes;
  for (const auto& v : variants)
    if (v.starts_with("elliptical-")) modes.push_back(v.substr(std::string("elliptical-").size()));
  return modes.empty() ? "" : fmt::format(" --m-modes {}", fmt::join(modes, ","));
}

std::string study_report(const ordered_json& summary, const StudyPreset& preset, const StudyFlags& flags,
                         const std::vector<std::string>& variants, const ValText& val, std::int64_t seq_len) {
  const std::int64_t windows = (static_cast<std::int64_t>(val.clean.size()) - 1) / seq_len;
  std::string md = fmt::format(
      "# Standard vs elliptical attention: character GPT\n\n"
      "Preset `{}`: {} trained {} steps of batch {} on `{}` (first 90% train, last 10% val), {} seed(s) (0..{}), "
      "identical initialisation and data order per seed. `elliptical` estimates m with the causal (prefix-mean) "
      "estimator. Val losses (nats per character; lower is better) over the {} non-overlapping windows of {} "
      "characters of the val text; for \"p corrupted\", a fraction p of the val characters (exactly round(p N) "
      "positions, chosen uniformly, seeded by the seed) is replaced by a different character drawn uniformly from "
      "the vocabulary, in the context only: the targets stay the clean next characters. Collapse, head redundancy "
      "and m averaged over the first {} val windows. Command: `ellipse study gpt --preset {} --seeds {}{} --data {}{} "
      "--out {}`. Values are mean ± sample standard deviation over seeds (± 0 with one seed).\n\n",
      flags.preset, preset.config, preset.steps, summary["batch"].get<std::int64_t>(), flags.text_path, flags.seeds,
      flags.seeds - 1, windows, seq_len, std::min(preset.probe_windows, static_cast<std::int64_t>(val.clean.size()) / seq_len),
      flags.preset, flags.seeds, m_modes_flag(variants),
      flags.text_path, device_flag(flags.device), flags.out_dir);
  for (const auto& v : variants)
    if (!caveat(v).empty()) md += fmt::format("Note on `{}`: {}.\n\n", v, caveat(v));

  auto row = [&](const std::string& label, auto&& cell) {
    std::vector<std::string> cells;
    for (const auto& v : variants) cells.push_back(cell(summary[v]));
    return table_row(label, cells);
  };
  md += table_header(variants);
  md += row("clean val loss", [](const ordered_json& v) { return nats(v["val_loss"]); });
  for (const auto& key : corruption_keys())
    md += row(fmt::format("val loss, p = {} corrupted", key), [&](const ordered_json& v) { return nats(v["corrupted"][key]); });
  md += layer_and_time_rows(summary, variants) + "\n";

  const VerdictUnit unit{.scale = 1, .decimals = 4, .unit = "nats"};
  const std::string worst = corruption_keys().back();
  md += "## What it shows\n\n";
  for (const auto& v : variants) {
    if (v == "standard") continue;
    const ordered_json& s = summary["standard"];
    const ordered_json& e = summary[v];
    if (!caveat(v).empty()) md += fmt::format("- `{}`: {}.\n", v, caveat(v));
    md += verdict("Clean val loss (lower is better)", v, e["val_loss"], "standard", s["val_loss"], flags.seeds, unit) +
          "\n";
    md += verdict(fmt::format("Val loss with p = {} corrupted (lower is better)", worst), v, e["corrupted"][worst],
                  "standard", s["corrupted"][worst], flags.seeds, unit) + "\n";
    md += verdict(fmt::format("What p = {} costs, corrupted minus clean loss (lower: more robust)", worst), v,
                  corruption_cost(e, worst), "standard", corruption_cost(s, worst), flags.seeds, unit) + "\n";
  }
  md += layer_conclusions(summary, variants, "standard") + "\n";

  const std::int64_t line_length = std::min(kSampleLineLength, seq_len);
  md += fmt::format(
      "## Figures\n\n"
      "- `figures/val_loss_vs_corruption.svg`: val loss, clean and with p = {} of the context corrupted, per "
      "variant, error bars = seed spread.\n"
      "- `figures/collapse_vs_layer.svg`: mean pairwise cosine similarity of tokens after each attention "
      "sublayer and each block.\n"
      "- `figures/head_redundancy_vs_layer.svg`: mean L2 distance between heads' attention maps per layer.\n"
      "- `figures/<elliptical variant>_metric.png`: m of seed 0, averaged over val windows and query positions: one "
      "row per (layer, head) from layer 1, head 0 down; one column per coordinate; colour 0 (dark) to 1 (yellow).\n"
      "- `figures/<variant>_attention.png`: attention maps of the sample line (the first {} characters of the val "
      "text: `{}`), rows = layers, columns = heads, queries down, keys across (nothing above the diagonal: the "
      "model is causal), each panel on its own colour scale.\n",
      fmt::join(corruption_keys(), ", "), line_length,
      printable_line(val.tokenizer.decode(std::vector<std::int64_t>(val.clean.begin(), val.clean.begin() + line_length))));
  return md;
}

int run_study_gpt(const StudyFlags& flags) {
  use_device(flags.device);
  const StudyPreset preset = study_preset(flags.preset);
  const std::vector<Variant> variants = study_variants(flags.m_modes);
  ELLIPSE_CHECK(!std::filesystem::exists(flags.out_dir + "/summary.json"), "study gpt: {} already holds a study; "
                "choose another --out", flags.out_dir);
  ELLIPSE_CHECK(std::filesystem::is_regular_file(flags.text_path), "study gpt: --data {}: no such file; pass a UTF-8 "
                "text file with --data FILE (the default, {}, is where the README's commands read Tiny Shakespeare "
                "from, relative to the working directory)", flags.text_path, kDefaultText);

  // The text as train_gpt reads it: the vocabulary of the whole text, the last 10% as val.
  ValText val;
  const std::u32string text = decode_utf8(io::read_file(flags.text_path, std::uint64_t{1} << 31), flags.text_path);
  val.tokenizer = CharTokenizer::from_text(text);
  val.clean = split_train_val(val.tokenizer.encode(text)).val;
  const GPTConfig config = gpt_preset(preset.config, val.tokenizer.size());
  ELLIPSE_CHECK(static_cast<std::int64_t>(val.clean.size()) > config.seq_len && val.tokenizer.size() >= 2,
                "study gpt: --data {}: its val part (the last 10%) has {} characters of {} distinct; expected more "
                "than the context length {} and at least 2 distinct", flags.text_path, val.clean.size(),
                val.tokenizer.size(), config.seq_len);
  for (std::int64_t seed = 0; seed < flags.seeds; ++seed) {
    val.corrupted.emplace_back();
    for (std::size_t i = 0; i < kCorruption.size(); ++i)
      val.corrupted.back().push_back(corrupt_characters(val.clean, kCorruption[i], val.tokenizer.size(),
                                                        mix64(static_cast<std::uint64_t>(seed), i)));
  }

  std::filesystem::create_directories(flags.out_dir + "/figures");
  std::map<std::string, std::vector<RunResult>> results;
  for (std::int64_t seed = 0; seed < flags.seeds; ++seed)
    for (const auto& variant : variants)
      results[variant.name].push_back(
          study_run(flags, preset, variant, static_cast<std::uint64_t>(seed), val, seed == 0));

  const std::vector<std::string> names = names_of(variants);
  ordered_json summary;
  summary["preset"] = flags.preset;
  summary["seeds"] = flags.seeds;
  summary["config"] = preset.config;
  summary["steps"] = preset.steps;
  summary["batch"] = config.batch;
  summary["data"] = flags.text_path;
  summary["variants"] = names;
  for (const auto& name : names) summary[name] = summarize(results[name]);
  io::write_file_atomic(flags.out_dir + "/summary.json", summary.dump(2) + "\n");
  write_study_figures(flags.out_dir + "/figures", summary, names);
  io::write_file_atomic(flags.out_dir + "/report.md",
                        study_report(summary, preset, flags, names, val, config.seq_len));
  std::vector<std::string> losses;
  for (const auto& name : names) losses.push_back(fmt::format("{} {}", name, nats(summary[name]["val_loss"])));
  fmt::print("clean val loss: {}\nwrote {}/summary.json, report.md and figures/\n", fmt::join(losses, ", "),
             flags.out_dir);
  return 0;
}

}  // namespace

void add_study_gpt_command(CLI::App& study, Action& action) {
  auto flags = std::make_shared<StudyFlags>();
  auto* g = study.add_subcommand("gpt", "The character GPT: val loss clean and with a corrupted context, collapse, "
                                        "redundancy, m");
  g->add_option("--preset", flags->preset, "quick (gpt-s, 1000 steps), full (gpt-s, 5000 steps) or smoke (gpt-tiny, "
                                           "20 steps: for tests)")
      ->check(CLI::IsMember({"quick", "full", "smoke"}))->capture_default_str();
  g->add_option("--m-modes", flags->m_modes, "Add elliptical variants with these estimators of m, comma-separated: "
                                             "sequence, random (causal always runs, as `elliptical`)")
      ->delimiter(',')->check(CLI::IsMember({"causal", "sequence", "random"}));
  g->add_option("--seeds", flags->seeds, "Seeds per variant (0..N-1)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100}))->capture_default_str();
  g->add_option("--data", flags->text_path, "UTF-8 text file (first 90% train, last 10% val)")->capture_default_str();
  g->add_option("--out", flags->out_dir, "Output directory")->capture_default_str();
  add_device_option(*g, flags->device);
  g->callback([&action, flags] { action = [flags] { return run_study_gpt(*flags); }; });
}

}  // namespace ellipse::cli
