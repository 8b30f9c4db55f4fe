#include "study/common.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
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

void check_study_options(const std::string& function, const std::vector<std::string>& kinds, std::int64_t seeds,
                         const std::string& out_dir) {
  const std::vector<std::string> registered = nn::attention_kinds();
  ELLIPSE_CHECK(!kinds.empty(), "{}: attention names no kind; expected one or more of {}", function,
                fmt::join(registered, ", "));
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    ELLIPSE_CHECK(std::find(registered.begin(), registered.end(), kinds[i]) != registered.end(),
                  "{}: attention kind '{}' is not registered; expected one of {}", function, kinds[i],
                  fmt::join(registered, ", "));
    ELLIPSE_CHECK(std::find(kinds.begin(), kinds.begin() + static_cast<std::ptrdiff_t>(i), kinds[i]) ==
                      kinds.begin() + static_cast<std::ptrdiff_t>(i),
                  "{}: attention names '{}' twice; expected distinct kinds", function, kinds[i]);
  }
  ELLIPSE_CHECK(seeds >= 1 && seeds <= 100, "{}: seeds is {}; expected 1 to 100", function, seeds);
  ELLIPSE_CHECK(!out_dir.empty(), "{}: out_dir is empty; expected the study's output directory", function);
  ELLIPSE_CHECK(!std::filesystem::exists(out_dir + "/summary.json"),
                "{}: out_dir {} already holds a study (summary.json); choose another", function, out_dir);
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

}  // namespace

Tensor write_attention(const std::string& dir, const std::vector<nn::Block*>& blocks, const std::string& prefix) {
  const Tensor maps = contiguous(attention_maps(blocks));
  io::save_npy(dir + "/" + prefix + "attention.npy", maps);
  const int cell = maps.shape()[2] > 64 ? 2 : 6;
  figures::write_panel_grid_png(dir + "/" + prefix + "attention.png", maps, {.cell_px = cell});
  return maps;
}

void write_class_attention(const std::string& dir, const Tensor& image, const Tensor& maps, std::int64_t side,
                           const std::string& prefix) {
  for (std::int64_t l = 0; l < maps.shape()[0]; ++l) {
    std::vector<Tensor> overlays;
    for (std::int64_t h = 0; h < maps.shape()[1]; ++h)
      overlays.push_back(reshape(narrow(select(select(select(maps, 0, l), 0, h), 0, 0), 0, 1, side * side),
                                 {side, side}));
    figures::write_side_by_side_png(fmt::format("{}/{}class_attention_layer{}.png", dir, prefix, l), image, overlays,
                                    {.pixel_px = 6, .gap_px = 6});
  }
}

ordered_json write_metric(const std::string& dir, const nn::LayerStudy& study, const std::string& prefix) {
  ordered_json json = ordered_json::array();
  figures::Grid grid;
  for (std::size_t l = 0; l < study.mean_metric.size(); ++l) {
    if (study.mean_metric[l].empty()) continue;
    json.push_back({{"layer", l}, {"m", study.mean_metric[l]}});
    for (const auto& head : study.mean_metric[l]) {
      grid.cols = static_cast<std::int64_t>(head.size());
      ++grid.rows;
      grid.values.insert(grid.values.end(), head.begin(), head.end());
    }
  }
  if (grid.rows > 0) {
    io::write_file_atomic(dir + "/" + prefix + "metric.json", json.dump(2) + "\n");
    figures::write_heatmap_png(dir + "/" + prefix + "metric.png", grid,
                               {.cell_px = 12, .separators = true, .range = figures::Range{0, 1}});
  }
  return json;
}

ordered_json layer_json(const nn::LayerStudy& s) {
  return {{"collapse_attn", s.collapse_attn}, {"collapse_block", s.collapse_block},
          {"head_redundancy", s.head_redundancy}};
}

// ---- statistics over seeds ----

Stat stat_of(const std::vector<double>& values) {
  Stat s;
  for (double v : values) s.mean += v / static_cast<double>(values.size());
  for (double v : values) s.std += (v - s.mean) * (v - s.mean);
  s.std = values.size() > 1 ? std::sqrt(s.std / static_cast<double>(values.size() - 1)) : 0.0;
  return s;
}

ordered_json stat_json(const std::vector<double>& values) {
  const Stat s = stat_of(values);
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
      const Stat s = stat_of(column(values, l));
      means.push_back(s.mean);
      stds.push_back(s.std);
    }
    return ordered_json{{"mean", means}, {"std", stds}};
  };
  variant["collapse_attn"] = per_layer(&nn::LayerStudy::collapse_attn);
  variant["collapse_block"] = per_layer(&nn::LayerStudy::collapse_block);
  variant["head_redundancy"] = per_layer(&nn::LayerStudy::head_redundancy);
}

double mean_of(const ordered_json& stat) { return stat["mean"].get<double>(); }
double std_of(const ordered_json& stat) { return stat["std"].get<double>(); }

// ---- the report ----

std::string kinds_title(const std::vector<std::string>& kinds) {
  std::string title = fmt::format("{}", fmt::join(kinds, " vs "));
  if (!title.empty()) title[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(title[0])));
  return title;
}

std::string how_it_ran(const std::vector<std::string>& kinds, const std::string& args, const std::string& function) {
  if (kinds == std::vector<std::string>{"standard", "elliptical"}) return fmt::format("Command: `ellipse study {}`.", args);
  return fmt::format("Run from C++: `study::{}` with attention kinds {}.", function, fmt::join(kinds, ", "));
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

namespace {

double mean_over_layers(const ordered_json& per_layer) {
  double total = 0;
  for (const auto& x : per_layer["mean"]) total += x.get<double>() / static_cast<double>(per_layer["mean"].size());
  return total;
}

}  // namespace

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

std::string verdict(const std::string& what, const std::string& variant, const ordered_json& variant_stat,
                    const std::string& baseline, const ordered_json& baseline_stat, std::int64_t seeds,
                    const VerdictUnit& unit) {
  const double diff = unit.scale * (mean_of(variant_stat) - mean_of(baseline_stat));
  const double spread = unit.scale * std::max(std_of(baseline_stat), std_of(variant_stat));
  std::string judgement;
  if (seeds < 2)
    judgement = "one seed, so no spread to judge it by";
  else if (std::abs(diff) <= 2 * spread)
    judgement = fmt::format("within twice the seed spread ({:.{}f} {}): no clear difference", spread, unit.decimals,
                            unit.unit);
  else
    judgement = fmt::format("more than twice the seed spread ({:.{}f} {})", spread, unit.decimals, unit.unit);
  return fmt::format("- {}: {} {:+.{}f} {} vs {} ({}).", what, variant, diff, unit.decimals, unit.unit, baseline,
                     judgement);
}

std::string layer_conclusions(const ordered_json& summary, const std::vector<std::string>& variants,
                              const std::string& baseline) {
  std::string md;
  const double base_collapse = mean_over_layers(summary[baseline]["collapse_block"]);
  for (const auto& v : variants) {
    if (v == baseline) continue;
    const double collapse = mean_over_layers(summary[v]["collapse_block"]);
    md += fmt::format("- Collapse of the block outputs, mean over layers: {} {:.3f}, {} {:.3f} ({}).\n", baseline,
                      base_collapse, v, collapse,
                      collapse < base_collapse ? fmt::format("{} tokens stay less alike", v)
                                               : fmt::format("{} attention does not reduce it here", v));
  }
  std::vector<std::string> redundancy;
  for (const auto& v : variants)
    redundancy.push_back(fmt::format("{} {:.3f}", v, mean_over_layers(summary[v]["head_redundancy"])));
  md += fmt::format("- Head redundancy, mean over layers: {} (larger means heads differ more).\n",
                    fmt::join(redundancy, ", "));
  return md;
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
  const std::string seconds_path = run_dir + "/train_seconds.txt";
  // The last metrics line up to the committed checkpoint: a run killed between its metrics line and its state
  // is one line ahead.
  const auto last_record = [&]() -> std::optional<ordered_json> {
    const std::string lines = metrics_up_to(files.metrics, checkpoint_step(files));
    if (lines.empty()) return std::nullopt;
    const auto newline = lines.rfind('\n', lines.size() >= 2 ? lines.size() - 2 : 0);
    return ordered_json::parse(lines.substr(newline == std::string::npos ? 0 : newline + 1));
  };
  const bool resume = std::filesystem::exists(files.state);
  double seconds_before = 0;
  if (resume && std::filesystem::exists(seconds_path)) seconds_before = std::stod(io::read_file(seconds_path, 64));
  StudyTraining result;
  const auto earlier = resume ? last_record() : std::nullopt;
  if (earlier && earlier->value(done_key, std::int64_t{-1}) == done_value) {
    tell(callbacks, fmt::format("{}: finished earlier, reusing {}", name, run_dir));
    result.last_record = *earlier;
    result.train_seconds = seconds_before;
    return result;
  }
  const auto start = std::chrono::steady_clock::now();
  train(resume);
  result.train_seconds =
      seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  io::write_file_atomic(seconds_path, fmt::format("{}\n", result.train_seconds));
  const auto last = last_record();
  ELLIPSE_CHECK(last && last->value(done_key, std::int64_t{-1}) == done_value,
                "study: the run in {} ended without its final evaluation ({} {})", run_dir, done_key, done_value);
  result.last_record = *last;
  return result;
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
