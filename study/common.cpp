#include "study/common.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <optional>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/io/npy.hpp"
#include "models/train_run.hpp"
#include "nn/attention.hpp"

namespace ellipse::study {

// ---- options ----

std::vector<StudyVariant> check_study_options(const std::string& function, const std::vector<std::string>& names,
                                              nn::MetricMode default_metric, std::int64_t seeds,
                                              const std::string& only, const std::string& out_dir) {
  const std::vector<std::string> registered = nn::attention_kinds();
  ELLIPSE_CHECK(!names.empty(), "{}: attention names no kind; expected one or more of {}, or elliptical-MODE", function,
                fmt::join(registered, ", "));
  std::vector<StudyVariant> variants;
  for (const auto& name : names) {
    StudyVariant variant{.name = name, .attention = name, .metric = std::nullopt};
    const std::string prefix = "elliptical-";
    if (std::find(registered.begin(), registered.end(), name) == registered.end()) {
      ELLIPSE_CHECK(name.starts_with(prefix), "{}: attention kind '{}' is not registered; expected one of {}, or "
                    "elliptical-MODE (MODE: sequence, causal or random)", function, name, fmt::join(registered, ", "));
      const std::string mode = name.substr(prefix.size());
      ELLIPSE_CHECK(mode == "sequence" || mode == "causal" || mode == "random", "{}: attention variant '{}' names the "
                    "estimator '{}'; expected elliptical-sequence, elliptical-causal or elliptical-random", function,
                    name, mode);
      variant.attention = "elliptical";
      variant.metric = nn::parse_metric_mode(mode);
      ELLIPSE_CHECK(variant.metric != default_metric, "{}: attention variant '{}' is 'elliptical' itself (this model "
                    "estimates m with {} by default); name it 'elliptical'", function, name,
                    nn::metric_mode_name(default_metric));
    }
    for (const auto& earlier : variants)
      ELLIPSE_CHECK(earlier.name != name, "{}: attention names '{}' twice; expected distinct kinds", function, name);
    variants.push_back(variant);
  }
  ELLIPSE_CHECK(only.empty() || std::find(names.begin(), names.end(), only) != names.end(),
                "{}: only is '{}'; expected empty or one of attention ({})", function, only, fmt::join(names, ", "));
  ELLIPSE_CHECK(seeds >= 1 && seeds <= 100, "{}: seeds is {}; expected 1 to 100", function, seeds);
  ELLIPSE_CHECK(!out_dir.empty(), "{}: out_dir is empty; expected the study's output directory", function);
  ELLIPSE_CHECK(!std::filesystem::exists(out_dir + "/summary.json"),
                "{}: out_dir {} already holds a study (summary.json); choose another", function, out_dir);
  return variants;
}

std::vector<StudyRunSlot> runs_of_this_process(const std::vector<StudyVariant>& variants, std::int64_t seeds,
                                               const std::string& only, const dist::Communicator& communicator) {
  std::vector<StudyRunSlot> runs;
  std::int64_t index = 0;
  for (std::int64_t seed = 0; seed < seeds; ++seed)
    for (std::size_t v = 0; v < variants.size(); ++v) {
      if (!only.empty() && variants[v].name != only) continue;
      if (index++ % communicator.size() == communicator.rank()) runs.push_back({.variant = v, .seed = seed});
    }
  return runs;
}

void check_run_measured(const std::string& out_dir, const std::string& name, std::int64_t seed) {
  const std::string dir = fmt::format("{}/runs/{}-seed{}", out_dir, name, seed);
  ELLIPSE_CHECK(std::filesystem::is_regular_file(dir + "/study.json"), "study: rank 0 finds no measurements of run "
                "{}-seed{} in {} after every rank finished its runs; the processes of a study must share out_dir (one "
                "machine, or a shared filesystem)", name, seed, dir);
}

StudyResult shared_result(const std::string& out_dir, const StudyResult& written, dist::Communicator& comm) {
  if (comm.size() == 1) return written;
  comm.barrier();
  return {.summarized = true, .summary_path = out_dir + "/summary.json", .report_path = out_dir + "/report.md"};
}

std::vector<std::string> names_of(const std::vector<StudyVariant>& variants) {
  std::vector<std::string> names;
  for (const auto& v : variants) names.push_back(v.name);
  return names;
}

// ---- probes ----

nn::LayerStudy probe_blocks(const std::vector<nn::Block*>& blocks, std::int64_t total, std::int64_t batch,
                            const std::function<void(std::int64_t first, std::int64_t count)>& forward,
                            const std::function<void()>& while_hooked) {
  NoGradGuard no_grad;
  nn::BlockProbe probe(blocks);
  for (std::int64_t first = 0; first < total; first += batch) {
    forward(first, std::min(batch, total - first));
    probe.collect();
  }
  if (while_hooked) while_hooked();
  return probe.result();
}

// ---- figures of one model on one input ----

namespace {

// Every layer's and head's attention maps for batch item 0, as [L, H, N, N].
Tensor attention_maps(const std::vector<nn::Block*>& blocks) {
  std::vector<Tensor> layers;
  for (const nn::Block* block : blocks) layers.push_back(unsqueeze(select(block->attention().last_attention(), 0, 0), 0));
  return concat(layers, 0);
}

// "{what} 0" .. "{what} n-1".
std::vector<std::string> numbered(std::string_view what, std::int64_t n) {
  std::vector<std::string> labels;
  for (std::int64_t i = 0; i < n; ++i) labels.push_back(fmt::format("{} {}", what, i));
  return labels;
}

}  // namespace

Tensor write_attention(const std::string& dir, const std::vector<nn::Block*>& blocks, const std::string& prefix,
                       const std::string& subject) {
  const Tensor maps = contiguous(attention_maps(blocks));
  io::save_npy(dir + "/" + prefix + "attention.npy", maps);
  const std::int64_t n = maps.shape()[2];
  // Attention weights are compared within a map: a map whose largest weight is 0.05 would be all dark on a
  // scale shared with a map that holds a 1, so each panel has its own, from 0 to its largest weight.
  const figures::Labels labels{
      .title = fmt::format("Attention weights of {}\nRows: layers. Columns: heads. In each panel the queries run "
                           "down and the keys across.",
                           subject),
      .x_label = fmt::format("key position, 0 to {}, in each panel", n - 1),
      .y_label = "query position, from the top",
      .row_labels = numbered("layer", maps.shape()[0]),
      .column_labels = numbered("head", maps.shape()[1]),
      .colour_label = "weight, each panel 0 to its max",
  };
  figures::write_panel_grid_png(dir + "/" + prefix + "attention.png", maps,
                                {.cell_px = n > 64 ? 2 : 6, .from_zero = true, .labels = labels});
  return maps;
}

void write_class_attention(const std::string& dir, const Tensor& image, const Tensor& maps, std::int64_t side,
                           const std::string& prefix, const std::string& subject) {
  std::vector<std::string> columns = numbered("head", maps.shape()[1]);
  columns.insert(columns.begin(), "image");
  for (std::int64_t l = 0; l < maps.shape()[0]; ++l) {
    std::vector<Tensor> overlays;
    for (std::int64_t h = 0; h < maps.shape()[1]; ++h)
      overlays.push_back(reshape(narrow(select(select(select(maps, 0, l), 0, h), 0, 0), 0, 1, side * side),
                                 {side, side}));
    const figures::Labels labels{
        .title = fmt::format("Class token's attention over the {0}x{0} patches, layer {1}, of {2}\nThe image, then "
                             "each head's weights on the patches they fall on.",
                             side, l, subject),
        .x_label = {},
        .y_label = {},
        .row_labels = {},
        .column_labels = columns,
        .colour_label = "attention weight",
    };
    figures::write_side_by_side_png(fmt::format("{}/{}class_attention_layer{}.png", dir, prefix, l), image, overlays,
                                    {.pixel_px = 6, .gap_px = 6, .overlay_from_zero = true, .labels = labels});
  }
}

ordered_json write_metric(const std::string& dir, const nn::LayerStudy& study, const std::string& prefix,
                          const std::string& subject) {
  ordered_json json = ordered_json::array();
  // One strip of 1 x head_dim cells per (layer, head), so that each is a panel row with its label.
  std::vector<std::vector<figures::Grid>> strips;
  std::vector<std::string> rows;
  for (std::size_t l = 0; l < study.mean_metric.size(); ++l) {
    if (study.mean_metric[l].empty()) continue;
    json.push_back({{"layer", l}, {"m", study.mean_metric[l]}});
    for (std::size_t h = 0; h < study.mean_metric[l].size(); ++h) {
      const auto& m = study.mean_metric[l][h];
      strips.push_back({{1, static_cast<std::int64_t>(m.size()), std::vector<float>(m.begin(), m.end())}});
      rows.push_back(fmt::format("L{} H{}", l, h));
    }
  }
  if (strips.empty()) return json;
  io::write_file_atomic(dir + "/" + prefix + "metric.json", json.dump(2) + "\n");
  const figures::Labels labels{
      .title = fmt::format("The metric m of {}\nRows: elliptical layer L, head H. Near 1: the coordinates where the "
                           "values change most between layers; near 0: nearly ignored.",
                           subject),
      .x_label = fmt::format("coordinate of the head, 0 to {}", strips[0][0].cols - 1),
      .y_label = {},
      .row_labels = rows,
      .column_labels = {},
      .colour_label = "value of m",
  };
  figures::write_panel_grid_png(dir + "/" + prefix + "metric.png", strips,
                                {.cell_px = 18, .separators = true, .range = figures::Range{0, 1}, .labels = labels},
                                1);
  return json;
}

ordered_json layer_json(const nn::LayerStudy& s) {
  return {{"collapse_attn", s.collapse_attn}, {"collapse_block", s.collapse_block},
          {"head_redundancy", s.head_redundancy}};
}

// ---- statistics over seeds ----

ordered_json stat_json(const std::vector<double>& values) {
  const Spread s = spread_of(values);
  return {{"mean", s.mean}, {"std", s.std}, {"values", values}};
}

namespace {

// Column i over seeds: per_seed[seed][i] for every seed.
std::vector<double> column(const std::vector<std::vector<double>>& per_seed, std::size_t i) {
  std::vector<double> values;
  for (const auto& run : per_seed) values.push_back(run[i]);
  return values;
}

}  // namespace

ordered_json keyed_stats(const std::vector<std::vector<double>>& per_seed, const std::vector<std::string>& keys) {
  ordered_json json;
  for (std::size_t i = 0; i < keys.size(); ++i) json[keys[i]] = stat_json(column(per_seed, i));
  return json;
}

void add_layer_stats(ordered_json& variant, const std::vector<nn::LayerStudy>& per_seed) {
  auto per_layer = [&](auto field) {
    std::vector<std::vector<double>> values;
    for (const auto& study : per_seed) values.push_back(study.*field);
    std::vector<double> means, stds;
    for (std::size_t l = 0; l < values.front().size(); ++l) {
      const Spread s = spread_of(column(values, l));
      means.push_back(s.mean);
      stds.push_back(s.std);
    }
    return ordered_json{{"mean", means}, {"std", stds}, {"values", values}};
  };
  variant["collapse_attn"] = per_layer(&nn::LayerStudy::collapse_attn);
  variant["collapse_block"] = per_layer(&nn::LayerStudy::collapse_block);
  variant["head_redundancy"] = per_layer(&nn::LayerStudy::head_redundancy);
}

double mean_of(const ordered_json& stat) { return stat["mean"].get<double>(); }
double std_of(const ordered_json& stat) { return stat["std"].get<double>(); }
std::vector<double> values_of(const ordered_json& stat) { return stat["values"].get<std::vector<double>>(); }

std::vector<double> layer_means(const ordered_json& layer_stat) {
  std::vector<double> means;
  for (const auto& per_layer : layer_stat["values"]) means.push_back(spread_of(per_layer.get<std::vector<double>>()).mean);
  return means;
}

std::vector<Measurement> layer_measurements() {
  const VerdictUnit cosine{.scale = 1, .decimals = 3, .unit = ""};
  auto of = [](const std::string& key) {
    return [key](const ordered_json& variant) { return layer_means(variant[key]); };
  };
  return {{"collapse_attn", "collapse of attention outputs, mean over layers", Better::lower, cosine,
           of("collapse_attn")},
          {"collapse_block", "collapse of block outputs, mean over layers", Better::lower, cosine, of("collapse_block")},
          {"head_redundancy", "L2 distance between heads' maps, mean over layers", Better::higher, cosine,
           of("head_redundancy")}};
}

std::vector<ComparedPair> compared_pairs(const std::vector<std::string>& variants) {
  std::vector<ComparedPair> pairs;
  for (std::size_t v = 1; v < variants.size(); ++v) pairs.push_back({variants[v], variants.front(), variants[v]});
  const auto has = [&](const std::string& name) {
    return std::find(variants.begin() + 1, variants.end(), name) != variants.end();
  };
  if (has("elliptical") && has("elliptical-random"))
    pairs.push_back({"elliptical", "elliptical-random", "elliptical vs elliptical-random"});
  return pairs;
}

ordered_json compare_variants(const ordered_json& summary, const std::vector<ComparedPair>& pairs,
                              const std::vector<Measurement>& measurements) {
  ordered_json comparisons = ordered_json::object();
  for (const auto& pair : pairs) {
    ordered_json& of_pair = comparisons[pair.key];
    for (const auto& m : measurements) {
      // A difference that rounds to 0 in the report's last digit is none.
      const double negligible = 0.5 * std::pow(10.0, -m.unit.decimals) / m.unit.scale;
      const PairedComparison c = compare_paired(m.per_seed(summary[pair.reference]), m.per_seed(summary[pair.variant]),
                                                m.better, negligible);
      of_pair[m.key] = {{"differences", c.differences},
                        {"mean", c.difference.mean},
                        {"std", c.difference.std},
                        {"ci95", c.ci95 ? ordered_json::array({c.ci95->lo, c.ci95->hi}) : ordered_json()},
                        {"verdict", verdict_name(c.verdict)}};
    }
  }
  return comparisons;
}

// ---- the report ----

std::string kinds_title(const std::vector<std::string>& kinds) {
  std::string title = fmt::format("{}", fmt::join(kinds, " vs "));
  if (!title.empty()) title[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(title[0])));
  return title;
}

std::string kinds_flag(const std::vector<std::string>& variants) {
  if (variants == std::vector<std::string>{"standard", "elliptical"}) return "";
  return fmt::format(" --kinds {}", fmt::join(variants, ","));
}

std::string how_it_ran(const std::vector<std::string>& variants, const std::string& args, const std::string& function) {
  const bool built_in = std::all_of(variants.begin(), variants.end(), [](const std::string& v) {
    return v == "standard" || v == "elliptical" || v.starts_with("elliptical-");
  });
  if (built_in) return fmt::format("Command: `ellipse study {}`.", args);
  return fmt::format("Run from C++: `study::{}` with attention kinds {}.", function, fmt::join(variants, ", "));
}

std::string table_header(const std::vector<std::string>& variants) {
  std::string rule = "|---";
  for (std::size_t i = 0; i < variants.size(); ++i) rule += "|---";
  return table_row("metric", variants) + rule + "|\n";
}

std::string device_flag(const Device& device) { return device.is_cpu() ? "" : " --device " + device.str(); }

std::string table_row(const std::string& label, const std::vector<std::string>& cells) {
  return fmt::format("| {} | {} |\n", label, fmt::join(cells, " | "));
}


std::string layer_and_time_rows(const ordered_json& summary, const std::vector<std::string>& variants) {
  auto row = [&](const std::string& label, auto&& cell) {
    std::vector<std::string> cells;
    for (const auto& v : variants) cells.push_back(cell(summary[v]));
    return table_row(label, cells);
  };
  auto layers = [](const std::string& key) {
    return [key](const ordered_json& variant) {
      std::vector<std::string> parts;
      for (const auto& x : variant[key]["mean"]) parts.push_back(fmt::format("{:.3f}", x.get<double>()));
      return fmt::format("{}", fmt::join(parts, ", "));
    };
  };
  return row("collapse, attention output, per layer", layers("collapse_attn")) +
         row("collapse, block output, per layer", layers("collapse_block")) +
         row("head redundancy (L2), per layer", layers("head_redundancy")) +
         row("training time (s)",
             [](const ordered_json& variant) { return fmt::format("{:.0f}", mean_of(variant["train_seconds"])); });
}

namespace {

std::string better_words(Better better) { return better == Better::higher ? "higher is better" : "lower is better"; }

// A value or difference in a measurement's unit, e.g. "+0.20 points"; `sign` shows + for positive numbers.
std::string in_unit(const VerdictUnit& unit, double value, bool sign) {
  const std::string number = sign ? fmt::format("{:+.{}f}", unit.scale * value, unit.decimals)
                                  : fmt::format("{:.{}f}", unit.scale * value, unit.decimals);
  return unit.unit.empty() ? number : number + " " + unit.unit;
}

std::string interval_words(const VerdictUnit& unit, const ordered_json& comparison) {
  if (comparison["ci95"].is_null()) return "no interval";
  return fmt::format("[{:+.{}f}, {:+.{}f}]", unit.scale * comparison["ci95"][0].get<double>(), unit.decimals,
                     unit.scale * comparison["ci95"][1].get<double>(), unit.decimals);
}

}  // namespace

std::string measurement_rows(const ordered_json& summary, const std::vector<std::string>& variants,
                             const std::vector<Measurement>& measurements) {
  std::string rows;
  for (const auto& m : measurements) {
    std::vector<std::string> cells;
    for (const auto& v : variants) {
      const Spread s = spread_of(m.per_seed(summary[v]));
      cells.push_back(fmt::format("{:.{}f} ± {:.{}f}", m.unit.scale * s.mean, m.unit.decimals, m.unit.scale * s.std,
                                  m.unit.decimals));
    }
    rows += table_row(m.label, cells);
  }
  return rows;
}

std::string comparison_tables(const ordered_json& comparisons, const std::vector<ComparedPair>& pairs,
                              const std::vector<Measurement>& measurements, std::int64_t seeds) {
  std::string md;
  for (const auto& pair : pairs) {
    md += fmt::format("### {} minus {}, seed by seed ({} seed{})\n\n", pair.variant, pair.reference, seeds,
                      seeds == 1 ? "" : "s");
    md += "| measurement | better when | mean difference | 95% interval | verdict |\n|---|---|---|---|---|\n";
    for (const auto& m : measurements) {
      const ordered_json& c = comparisons[pair.key][m.key];
      md += fmt::format("| {} | {} | {} | {} | {} |\n", m.label, m.better == Better::higher ? "higher" : "lower",
                        in_unit(m.unit, c["mean"].get<double>(), true), interval_words(m.unit, c),
                        c["verdict"].get<std::string>());
    }
    md += "\n";
  }
  return md;
}

std::string verdict_line(const Measurement& measurement, const ComparedPair& pair, const ordered_json& comparisons,
                         std::int64_t seeds) {
  const ordered_json& c = comparisons[pair.key][measurement.key];
  const std::string difference = in_unit(measurement.unit, c["mean"].get<double>(), true);
  if (c["ci95"].is_null())
    return fmt::format("- {} ({}): {} {} vs {}; one seed, so no interval and no verdict.", measurement.label,
                       better_words(measurement.better), pair.variant, difference, pair.reference);
  return fmt::format("- {} ({}): {} {} vs {}, 95% interval {} over {} seeds: **{}**.", measurement.label,
                     better_words(measurement.better), pair.variant, difference, pair.reference,
                     interval_words(measurement.unit, c), seeds, c["verdict"].get<std::string>());
}

StudyResult finish_study(const std::string& out_dir, const ordered_json& summary, const std::string& report,
                         const std::string& headline, const StudyCallbacks& callbacks) {
  const StudyResult result{.summarized = true, .summary_path = out_dir + "/summary.json",
                           .report_path = out_dir + "/report.md"};
  io::write_file_atomic(result.report_path, report);
  io::write_file_atomic(result.summary_path, summary.dump(2) + "\n");
  tell(callbacks, fmt::format("{}\nwrote {}/summary.json, report.md and figures/", headline, out_dir));
  return result;
}

// ---- figures of a study ----

figures::Series clean_and_keyed_series(const ordered_json& summary_variant, const std::string& clean_key,
                                       const std::string& keyed_key, const std::vector<std::string>& keys,
                                       double scale, const std::string& label) {
  figures::Series s{.name = label};
  s.ys.push_back(scale * mean_of(summary_variant[clean_key]));
  s.spread.push_back(scale * std_of(summary_variant[clean_key]));
  for (const auto& k : keys) {
    s.ys.push_back(scale * mean_of(summary_variant[keyed_key][k]));
    s.spread.push_back(scale * std_of(summary_variant[keyed_key][k]));
  }
  return s;
}

void write_layer_charts(const std::string& dir, const ordered_json& summary,
                        const std::vector<std::string>& variants) {
  auto layer_chart = [&](const std::string& title, const std::string& y_label,
                         const std::vector<std::pair<std::string, std::string>>& keys) {
    figures::LineChart chart{.title = title, .x_label = "layer", .y_label = y_label};
    for (const auto& variant : variants) {
      for (const auto& [key, label] : keys) {
        figures::Series s{.name = variant + label};
        s.ys = summary[variant][key]["mean"].get<std::vector<double>>();
        s.spread = summary[variant][key]["std"].get<std::vector<double>>();
        for (std::size_t l = 0; l < s.ys.size(); ++l) s.xs.push_back(static_cast<double>(l));
        chart.series.push_back(std::move(s));
      }
    }
    return chart;
  };
  figures::write_line_chart_svg(
      dir + "/collapse_vs_layer.svg",
      layer_chart("Representation collapse: mean pairwise cosine similarity of tokens", "cosine similarity",
                  {{"collapse_attn", " (attention output)"}, {"collapse_block", " (block output)"}}));
  figures::write_line_chart_svg(
      dir + "/head_redundancy_vs_layer.svg",
      layer_chart("Head redundancy: mean L2 distance between heads' attention maps", "L2 distance",
                  {{"head_redundancy", ""}}));
}

// ---- training runs that survive an interruption ----

void tell(const StudyCallbacks& callbacks, const std::string& line) {
  if (callbacks.on_message) callbacks.on_message(line);
}

std::function<void(const TrainProgress&)> train_step_callback(const StudyCallbacks& callbacks,
                                                               const std::string& name) {
  if (!callbacks.on_train_step) return {};
  return [&callbacks, name](const TrainProgress& progress) { callbacks.on_train_step(name, progress); };
}

void tell_eval(const StudyCallbacks& callbacks, const std::string& name, const std::string& line) {
  if (callbacks.on_train_eval) callbacks.on_train_eval(name, line);
}

StudyTraining train_or_reuse(const std::string& name, const std::string& run_dir, const std::string& done_key,
                             std::int64_t done_value, const std::function<void(bool resume)>& train,
                             const StudyCallbacks& callbacks) {
  const RunFiles files(run_dir);
  // The last metrics line up to the committed checkpoint: a run killed between its metrics line and its state
  // is one line ahead.
  const auto last_record = [&]() -> std::optional<ordered_json> {
    const std::string lines = metrics_up_to(files.metrics, checkpoint_step(files));
    if (lines.empty()) return std::nullopt;
    return ordered_json::parse(last_line(lines));
  };
  // The training time is the last line's elapsed_s, which a resumed run carries on from its checkpoint's line.
  const auto finished = [](const ordered_json& record) {
    return StudyTraining{.last_record = record, .train_seconds = record.value("elapsed_s", 0.0)};
  };
  const bool resume = std::filesystem::exists(files.state);
  const auto earlier = resume ? last_record() : std::nullopt;
  if (earlier && earlier->value(done_key, std::int64_t{-1}) == done_value) {
    tell(callbacks, fmt::format("{}: finished earlier, reusing {}", name, run_dir));
    return finished(*earlier);
  }
  train(resume);
  const auto last = last_record();
  ELLIPSE_CHECK(last && last->value(done_key, std::int64_t{-1}) == done_value,
                "study: the run in {} ended without its final evaluation ({} {})", run_dir, done_key, done_value);
  return finished(*last);
}

MeasurementCache::MeasurementCache(std::string path) : path_(std::move(path)) {
  if (!std::filesystem::exists(path_)) return;
  try {
    values_ = ordered_json::parse(io::read_file(path_, std::uint64_t{1} << 26));
  } catch (const ordered_json::exception& e) {
    fail("study: {} is not valid JSON ({}); delete it to measure the run again", path_, e.what());
  }
  ELLIPSE_CHECK(values_.is_object(), "study: {} holds no JSON object; delete it to measure the run again", path_);
}

void MeasurementCache::bad_entry(const std::string& key) const {
  fail("study: {} holds a malformed '{}'; delete the file to measure the run again", path_, key);
}

void MeasurementCache::save() const { io::write_file_atomic(path_, values_.dump(2) + "\n"); }

}  // namespace ellipse::study

namespace ellipse::nn {

void to_json(nlohmann::ordered_json& json, const LayerStudy& study) {
  json = {{"collapse_attn", study.collapse_attn}, {"collapse_block", study.collapse_block},
          {"head_redundancy", study.head_redundancy}, {"mean_metric", study.mean_metric}};
}

void from_json(const nlohmann::ordered_json& json, LayerStudy& study) {
  json.at("collapse_attn").get_to(study.collapse_attn);
  json.at("collapse_block").get_to(study.collapse_block);
  json.at("head_redundancy").get_to(study.head_redundancy);
  json.at("mean_metric").get_to(study.mean_metric);
}

}  // namespace ellipse::nn
