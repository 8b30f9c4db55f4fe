// `ellipse inspect` and `ellipse study vit`: what the attention layers of trained models do, in numbers
// and pictures. inspect looks inside one model on one input; study trains standard and elliptical
// attention side by side (same seeds, same data order) and compares accuracy, robustness, collapse, head
// redundancy and the metric m. Outputs are described in docs/study.md.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "cli/commands.hpp"
#include "cli/figures.hpp"
#include "cli/progress.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/io/npy.hpp"
#include "models/gpt_train.hpp"
#include "models/vit_train.hpp"
#include "nn/analysis.hpp"

namespace ellipse::cli {

namespace {

using nlohmann::ordered_json;

std::vector<nn::Block*> blocks_of(auto& model, std::int64_t layers) {
  std::vector<nn::Block*> blocks;
  for (std::int64_t i = 0; i < layers; ++i) blocks.push_back(&model.block(static_cast<std::size_t>(i)));
  return blocks;
}

// ---- what inspect and study draw: attention maps, the class token's attention, the metric m ----

// Every layer's and head's attention maps for batch item 0, as [L, H, N, N] (after a forward pass with
// the blocks' study hooks on).
Tensor attention_maps(const std::vector<nn::Block*>& blocks) {
  std::vector<Tensor> layers;
  for (const nn::Block* block : blocks) layers.push_back(select(block->attention().last_attention(), 0, 0));
  std::vector<Tensor> expanded;
  for (const Tensor& t : layers) expanded.push_back(unsqueeze(t, 0));
  return concat(expanded, 0);
}

// Writes attention.npy [L, H, N, N], attention.png (rows: layers, columns: heads) and returns the maps.
Tensor write_attention(const std::string& dir, const std::vector<nn::Block*>& blocks, const std::string& prefix) {
  const Tensor maps = contiguous(attention_maps(blocks));
  io::save_npy(dir + "/" + prefix + "attention.npy", maps);
  const int cell = maps.shape()[2] > 64 ? 2 : 6;
  figures::write_panel_grid_png(dir + "/" + prefix + "attention.png", maps, {.cell_px = cell});
  return maps;
}

// The class token's attention over the patch grid, beside the image: one PNG per layer, the image and
// then one 7x7 map per head (each on its own colour scale).
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

// m per elliptical layer and head: metric.json, and metric.png with one row per (layer, head) and one
// column per coordinate (rows in layer-major order; standard layers have none).
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

// ---- inspect ----

struct InspectFlags {
  std::string model_dir, out_dir, text, data_dir{kFashionMnistDir};
  std::int64_t image = -1;
};

int run_inspect(const InspectFlags& flags) {
  const std::string config_path = flags.model_dir + "/config.json";
  const auto config = nlohmann::json::parse(io::read_file(config_path, 1 << 20), nullptr, false);
  ELLIPSE_CHECK(config.is_object() && config.contains("model") && config["model"].is_string(),
                "{}: not a model config (no 'model' key)", config_path);
  const std::string kind = config["model"].get<std::string>();
  std::filesystem::create_directories(flags.out_dir);
  NoGradGuard no_grad;
  ordered_json summary;
  if (kind == "vit") {
    ELLIPSE_CHECK(flags.image >= 0 && flags.text.empty(), "inspect: {} holds a ViT: pass --image K", flags.model_dir);
    auto model = load_vit(flags.model_dir);
    const LabeledImages test = load_fashion_mnist(flags.data_dir, "test");
    ELLIPSE_CHECK(flags.image < test.size(), "inspect: --image {} is out of range; the test set has {} images",
                  flags.image, test.size());
    const Tensor image = narrow(test.images, 0, flags.image, 1);
    const auto blocks = blocks_of(*model, model->config().n_layer);
    nn::BlockProbe probe(blocks);
    const Tensor logits = model->forward(image);
    probe.collect();
    const Tensor maps = write_attention(flags.out_dir, blocks, "");
    write_class_attention(flags.out_dir, select(image, 0, 0), maps, model->config().patches_per_side(), "");
    figures::write_heatmap_png(flags.out_dir + "/image.png", select(image, 0, 0),
                               {.map = figures::Colormap::grey, .cell_px = 8, .range = figures::Range{0, 1}});
    const auto scores = logits.to_vector<float>();
    const auto predicted = std::max_element(scores.begin(), scores.end()) - scores.begin();
    const auto label = narrow(test.labels, 0, flags.image, 1).item();
    summary["image"] = flags.image;
    summary["label"] = fashion_mnist_class_names()[static_cast<std::size_t>(label)];
    summary["predicted"] = fashion_mnist_class_names()[static_cast<std::size_t>(predicted)];
    summary["layers"] = layer_json(probe.result());
    summary["m"] = write_metric(flags.out_dir, probe.result(), "");
  } else if (kind == "gpt") {
    ELLIPSE_CHECK(!flags.text.empty() && flags.image < 0, "inspect: {} holds a GPT: pass --text STR",
                  flags.model_dir);
    LoadedGPT loaded = load_gpt(flags.model_dir);
    const auto ids = loaded.tokenizer.encode(decode_utf8(flags.text, "--text"));
    const auto n = static_cast<std::int64_t>(ids.size());
    ELLIPSE_CHECK(n >= 2 && n <= loaded.model->config().seq_len, "inspect: --text has {} characters; expected 2 to "
                  "the context length {}", n, loaded.model->config().seq_len);
    const auto blocks = blocks_of(*loaded.model, loaded.model->config().n_layer);
    nn::BlockProbe probe(blocks);
    loaded.model->forward(from_vector(ids, {1, n}));
    probe.collect();
    write_attention(flags.out_dir, blocks, "");
    summary["text"] = flags.text;
    summary["layers"] = layer_json(probe.result());
    summary["m"] = write_metric(flags.out_dir, probe.result(), "");
  } else {
    fail("{}: 'model' is '{}'; inspect knows 'vit' and 'gpt'", config_path, kind);
  }
  io::write_file_atomic(flags.out_dir + "/summary.json", summary.dump(2) + "\n");
  fmt::print("{}\n", summary["layers"].dump());
  fmt::print("wrote attention.png, attention.npy, summary.json{} to {}\n",
             summary["m"].empty() ? "" : ", metric.png, metric.json", flags.out_dir);
  return 0;
}

// ---- study vit ----

struct StudyPreset {
  std::string config;
  std::int64_t epochs, batch;
  bool augment;
  std::int64_t attack_images;  // FGSM and PGD run on the first N test images
  std::int64_t probe_images;   // collapse, redundancy and m are averaged over the first N test images
};

StudyPreset study_preset(const std::string& name) {
  if (name == "quick") return {.config = "vit-xs", .epochs = 5, .batch = 64, .augment = false, .attack_images = 500,
                               .probe_images = 500};
  if (name == "full") return {.config = "vit-s", .epochs = 30, .batch = 128, .augment = true, .attack_images = 10000,
                              .probe_images = 2000};
  fail("study vit: unknown preset '{}'; expected quick or full", name);
}

const std::vector<double> kNoiseSigmas{0.1, 0.2, 0.3};
const std::vector<int> kEpsilon255{1, 2, 4, 8};

struct RunResult {
  double test_acc = 0, train_seconds = 0;
  std::vector<double> noise, fgsm, pgd;  // in the order of kNoiseSigmas and kEpsilon255
  nn::LayerStudy layers;
};

struct Stat {
  double mean = 0, std = 0;
};
Stat stat_of(const std::vector<double>& values) {
  Stat s;
  for (double v : values) s.mean += v / static_cast<double>(values.size());
  for (double v : values) s.std += (v - s.mean) * (v - s.mean);
  s.std = values.size() > 1 ? std::sqrt(s.std / static_cast<double>(values.size() - 1)) : 0.0;
  return s;
}

struct StudyFlags {
  std::string preset = "quick", out_dir = "runs/study-vit", data_dir{kFashionMnistDir};
  std::int64_t seeds = 1;
};

RunResult study_run(const StudyFlags& flags, const StudyPreset& preset, nn::AttentionKind attention,
                    std::uint64_t seed, const LabeledImages& test, bool draw) {
  const std::string name = fmt::format("{}-seed{}", nn::attention_kind_name(attention), seed);
  ViTTrainOptions options;
  options.data_dir = flags.data_dir;
  options.config = preset.config;
  options.attention = attention;
  options.epochs = preset.epochs;
  options.batch = preset.batch;
  options.augment = preset.augment;
  options.seed = seed;
  options.out_dir = flags.out_dir + "/runs/" + name;
  RunResult result;
  // A study interrupted earlier continues: a finished run is reused, an unfinished one resumed. The
  // training time of each part is added up in train_seconds.txt.
  const RunFiles files(options.out_dir);
  const std::string seconds_path = options.out_dir + "/train_seconds.txt";
  options.resume = std::filesystem::exists(files.state);
  double seconds_before = 0;
  if (options.resume && std::filesystem::exists(seconds_path))
    seconds_before = std::stod(io::read_file(seconds_path, 64));
  const auto last_record = [&]() -> std::optional<ordered_json> {
    // Up to the committed checkpoint: a run killed between its metrics line and its state is one line ahead.
    const std::string lines = metrics_up_to(files.metrics, checkpoint_step(files));
    const auto newline = lines.rfind('\n', lines.size() >= 2 ? lines.size() - 2 : 0);
    if (lines.empty()) return std::nullopt;
    return ordered_json::parse(lines.substr(newline == std::string::npos ? 0 : newline + 1));
  };
  const auto finished = options.resume ? last_record() : std::nullopt;
  if (options.resume && finished && finished->value("epoch", std::int64_t{-1}) == preset.epochs) {
    fmt::print("{}: finished earlier, reusing {}\n", name, options.out_dir);
    result.test_acc = finished->value("test_acc", 0.0);
    result.train_seconds = seconds_before;
  } else {
    const auto start = std::chrono::steady_clock::now();
    std::optional<Progress> bar;
    const ViTEvalRecord last = train_vit(
        options,
        [&](const TrainProgress& p) {
          if (!bar) bar.emplace(p.steps, 100);
          bar->update(p.step, p.elapsed_s, fmt::format("{}  loss {:.4f}  {:.0f} img/s", name, p.loss, p.items_per_s));
        },
        [&](const ViTEvalRecord& r) {
          bar->line(fmt::format("{} epoch {}: test_acc {:.2f}%", name, r.epoch, 100 * r.test_acc));
        });
    bar.reset();
    result.train_seconds =
        seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    io::write_file_atomic(seconds_path, fmt::format("{}\n", result.train_seconds));
    result.test_acc = last.test_acc;
  }

  auto model = load_vit(options.out_dir);
  for (double sigma : kNoiseSigmas)
    result.noise.push_back(
        evaluate_vit(*model, test, {.kind = Perturbation::Kind::gaussian, .size = sigma, .seed = seed}).accuracy);
  for (int eps : kEpsilon255) {
    const double size = eps / 255.0;
    result.fgsm.push_back(
        evaluate_vit(*model, test, {.kind = Perturbation::Kind::fgsm, .size = size}, preset.attack_images).accuracy);
    result.pgd.push_back(
        evaluate_vit(*model, test, {.kind = Perturbation::Kind::pgd, .size = size, .seed = seed}, preset.attack_images)
            .accuracy);
  }
  const auto blocks = blocks_of(*model, model->config().n_layer);
  {
    NoGradGuard no_grad;
    nn::BlockProbe probe(blocks);
    const std::int64_t probe_images = std::min(preset.probe_images, test.size());
    for (std::int64_t first = 0; first < probe_images; first += 250) {
      model->forward(narrow(test.images, 0, first, std::min<std::int64_t>(250, probe_images - first)));
      probe.collect();
    }
    result.layers = probe.result();
  }
  if (draw) {  // attention maps of the first test image, and m (after `probe` is gone: probes must not overlap)
    NoGradGuard no_grad;
    const std::string figures_dir = flags.out_dir + "/figures";
    const std::string prefix = std::string(nn::attention_kind_name(attention)) + "_";
    write_metric(figures_dir, result.layers, prefix);
    nn::BlockProbe one(blocks);
    const Tensor image = narrow(test.images, 0, 0, 1);
    model->forward(image);
    const Tensor maps = write_attention(figures_dir, blocks, prefix);
    write_class_attention(figures_dir, select(image, 0, 0), maps, model->config().patches_per_side(), prefix);
  }
  fmt::print("{}: test_acc {:.2f}%  noise {}  fgsm {}  pgd {}  ({})\n", name, 100 * result.test_acc,
             fmt::join(result.noise, " "), fmt::join(result.fgsm, " "), fmt::join(result.pgd, " "),
             format_duration(result.train_seconds));
  std::fflush(stdout);
  return result;
}

// Per position over seeds: [seed][i] -> (mean[i], std[i]).
std::pair<std::vector<double>, std::vector<double>> stats_by_position(const std::vector<std::vector<double>>& runs) {
  std::vector<double> means, stds;
  for (std::size_t i = 0; i < runs.front().size(); ++i) {
    std::vector<double> column;
    for (const auto& run : runs) column.push_back(run[i]);
    const Stat s = stat_of(column);
    means.push_back(s.mean);
    stds.push_back(s.std);
  }
  return {means, stds};
}

ordered_json stat_json(const std::vector<double>& values) {
  const Stat s = stat_of(values);
  return {{"mean", s.mean}, {"std", s.std}, {"values", values}};
}

std::string eps_label(int eps) { return fmt::format("{}/255", eps); }

// The summary of one attention kind over seeds.
ordered_json summarize(const std::vector<RunResult>& runs) {
  auto collect = [&](auto&& field) {
    std::vector<std::vector<double>> out;
    for (const auto& r : runs) out.push_back(field(r));
    return out;
  };
  auto by_key = [&](const std::vector<std::vector<double>>& values, auto&& key_of, std::size_t count) {
    ordered_json json;
    for (std::size_t i = 0; i < count; ++i) {
      std::vector<double> column;
      for (const auto& v : values) column.push_back(v[i]);
      json[key_of(i)] = stat_json(column);
    }
    return json;
  };
  auto per_layer = [&](auto&& field) {
    const auto [means, stds] = stats_by_position(collect(field));
    return ordered_json{{"mean", means}, {"std", stds}};
  };
  ordered_json json;
  std::vector<double> acc, seconds;
  for (const auto& r : runs) {
    acc.push_back(r.test_acc);
    seconds.push_back(r.train_seconds);
  }
  json["test_acc"] = stat_json(acc);
  json["noise"] = by_key(collect([](const RunResult& r) { return r.noise; }),
                         [](std::size_t i) { return fmt::format("{}", kNoiseSigmas[i]); }, kNoiseSigmas.size());
  json["fgsm"] = by_key(collect([](const RunResult& r) { return r.fgsm; }),
                        [](std::size_t i) { return eps_label(kEpsilon255[i]); }, kEpsilon255.size());
  json["pgd"] = by_key(collect([](const RunResult& r) { return r.pgd; }),
                       [](std::size_t i) { return eps_label(kEpsilon255[i]); }, kEpsilon255.size());
  json["collapse_attn"] = per_layer([](const RunResult& r) { return r.layers.collapse_attn; });
  json["collapse_block"] = per_layer([](const RunResult& r) { return r.layers.collapse_block; });
  json["head_redundancy"] = per_layer([](const RunResult& r) { return r.layers.head_redundancy; });
  json["train_seconds"] = stat_json(seconds);
  return json;
}

double mean_of(const ordered_json& stat) { return stat["mean"].get<double>(); }
double std_of(const ordered_json& stat) { return stat["std"].get<double>(); }

// "87.12 ± 0.30" (percent) for an accuracy statistic.
std::string percent(const ordered_json& stat) {
  return fmt::format("{:.2f} ± {:.2f}", 100 * mean_of(stat), 100 * std_of(stat));
}

// One honest sentence comparing an accuracy between the two kinds.
std::string verdict(const std::string& what, const ordered_json& standard, const ordered_json& elliptical,
                    std::int64_t seeds) {
  const double diff = 100 * (mean_of(elliptical) - mean_of(standard));
  const double spread = 100 * std::max(std_of(standard), std_of(elliptical));
  std::string judgement;
  if (seeds < 2)
    judgement = "one seed, so no spread to judge it by";
  else if (std::abs(diff) <= 2 * spread)
    judgement = fmt::format("within twice the seed spread ({:.2f} points): no clear difference", spread);
  else
    judgement = fmt::format("more than twice the seed spread ({:.2f} points)", spread);
  return fmt::format("- {}: elliptical {:+.2f} points vs standard ({}).", what, diff, judgement);
}

void write_study_figures(const std::string& dir, const ordered_json& summary) {
  const std::vector<std::string> kinds{"standard", "elliptical"};
  auto series_of = [&](const std::string& kind, const std::string& key, const std::vector<std::string>& keys,
                       const std::string& label) {
    figures::Series s{.name = label};
    s.ys.push_back(100 * mean_of(summary[kind]["test_acc"]));
    s.spread.push_back(100 * std_of(summary[kind]["test_acc"]));
    for (const auto& k : keys) {
      s.ys.push_back(100 * mean_of(summary[kind][key][k]));
      s.spread.push_back(100 * std_of(summary[kind][key][k]));
    }
    return s;
  };
  std::vector<std::string> sigma_keys, eps_keys;
  figures::LineChart noise{.title = "Test accuracy under Gaussian pixel noise", .x_label = "noise sigma",
                           .y_label = "accuracy (%)"};
  noise.categories.push_back("0 (clean)");
  for (double s : kNoiseSigmas) {
    sigma_keys.push_back(fmt::format("{}", s));
    noise.categories.push_back(sigma_keys.back());
  }
  figures::LineChart attacks{.title = "Test accuracy under FGSM and PGD-20 attacks", .x_label = "epsilon",
                             .y_label = "accuracy (%)"};
  attacks.categories.push_back("0 (clean)");
  for (int e : kEpsilon255) {
    eps_keys.push_back(eps_label(e));
    attacks.categories.push_back(eps_keys.back());
  }
  for (const auto& kind : kinds) {
    noise.series.push_back(series_of(kind, "noise", sigma_keys, kind));
    attacks.series.push_back(series_of(kind, "fgsm", eps_keys, kind + " FGSM"));
    attacks.series.push_back(series_of(kind, "pgd", eps_keys, kind + " PGD-20"));
  }
  figures::write_line_chart_svg(dir + "/accuracy_vs_noise.svg", noise);
  figures::write_line_chart_svg(dir + "/accuracy_vs_eps.svg", attacks);

  auto layer_chart = [&](const std::string& title, const std::string& y_label,
                         const std::vector<std::pair<std::string, std::string>>& keys) {
    figures::LineChart chart{.title = title, .x_label = "layer", .y_label = y_label};
    for (const auto& kind : kinds) {
      for (const auto& [key, label] : keys) {
        figures::Series s{.name = kind + label};
        s.ys = summary[kind][key]["mean"].get<std::vector<double>>();
        s.spread = summary[kind][key]["std"].get<std::vector<double>>();
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

std::string study_report(const ordered_json& summary, const StudyPreset& preset, const StudyFlags& flags,
                         std::int64_t test_images) {
  const auto& st = summary["standard"];
  const auto& el = summary["elliptical"];
  std::string md = fmt::format(
      "# Standard vs elliptical attention: ViT on Fashion-MNIST\n\n"
      "Preset `{}`: {} trained {} epochs of batch {}{}, {} seed(s) (0..{}), identical data order per seed. Clean accuracy "
      "and noise on all {} test images; FGSM and PGD-20 (step eps/4, random start) on the first {}; collapse, head "
      "redundancy and m averaged over the first {}. Command: `ellipse study vit --preset {} --seeds {} --out {}`. "
      "Values are mean ± sample standard deviation over seeds (± 0 with one seed).\n\n"
      "| metric | standard | elliptical |\n|---|---|---|\n",
      flags.preset, preset.config, preset.epochs, preset.batch, preset.augment ? " with augmentation" : "", flags.seeds,
      flags.seeds - 1, test_images, std::min(test_images, preset.attack_images),
      std::min(test_images, preset.probe_images), flags.preset, flags.seeds, flags.out_dir);
  md += fmt::format("| clean test accuracy (%) | {} | {} |\n", percent(st["test_acc"]), percent(el["test_acc"]));
  for (double s : kNoiseSigmas) {
    const auto key = fmt::format("{}", s);
    md += fmt::format("| Gaussian noise sigma {} (%) | {} | {} |\n", key, percent(st["noise"][key]),
                      percent(el["noise"][key]));
  }
  for (const char* attack : {"fgsm", "pgd"})
    for (int e : kEpsilon255)
      md += fmt::format("| {} eps {} (%) | {} | {} |\n", attack == std::string("fgsm") ? "FGSM" : "PGD-20",
                        eps_label(e), percent(st[attack][eps_label(e)]), percent(el[attack][eps_label(e)]));
  auto layers = [](const ordered_json& v) {
    std::vector<std::string> parts;
    for (const auto& x : v["mean"]) parts.push_back(fmt::format("{:.3f}", x.get<double>()));
    return fmt::format("{}", fmt::join(parts, ", "));
  };
  md += fmt::format("| collapse, attention output, per layer | {} | {} |\n", layers(st["collapse_attn"]),
                    layers(el["collapse_attn"]));
  md += fmt::format("| collapse, block output, per layer | {} | {} |\n", layers(st["collapse_block"]),
                    layers(el["collapse_block"]));
  md += fmt::format("| head redundancy (L2), per layer | {} | {} |\n", layers(st["head_redundancy"]),
                    layers(el["head_redundancy"]));
  md += fmt::format("| training time (s) | {:.0f} | {:.0f} |\n\n", mean_of(st["train_seconds"]),
                    mean_of(el["train_seconds"]));

  md += "## What it shows\n\n";
  md += verdict("Clean accuracy", st["test_acc"], el["test_acc"], flags.seeds) + "\n";
  md += verdict("Gaussian noise, sigma 0.3", st["noise"]["0.3"], el["noise"]["0.3"], flags.seeds) + "\n";
  md += verdict("FGSM, eps 4/255", st["fgsm"]["4/255"], el["fgsm"]["4/255"], flags.seeds) + "\n";
  md += verdict("PGD-20, eps 4/255", st["pgd"]["4/255"], el["pgd"]["4/255"], flags.seeds) + "\n";
  auto mean_over_layers = [](const ordered_json& v) {
    double total = 0;
    for (const auto& x : v["mean"]) total += x.get<double>() / static_cast<double>(v["mean"].size());
    return total;
  };
  md += fmt::format("- Collapse of the block outputs, mean over layers: standard {:.3f}, elliptical {:.3f} ({}).\n",
                    mean_over_layers(st["collapse_block"]), mean_over_layers(el["collapse_block"]),
                    mean_over_layers(el["collapse_block"]) < mean_over_layers(st["collapse_block"])
                        ? "elliptical tokens stay less alike" : "elliptical attention does not reduce it here");
  md += fmt::format("- Head redundancy, mean over layers: standard {:.3f}, elliptical {:.3f} (larger means heads "
                    "differ more).\n\n", mean_over_layers(st["head_redundancy"]),
                    mean_over_layers(el["head_redundancy"]));
  md += "## Figures\n\n"
        "- `figures/accuracy_vs_noise.svg`: clean accuracy and accuracy under noise sigma 0.1-0.3, both kinds, "
        "error bars = seed spread.\n"
        "- `figures/accuracy_vs_eps.svg`: accuracy under FGSM and PGD-20 against eps (1/255 to 8/255).\n"
        "- `figures/collapse_vs_layer.svg`: mean pairwise cosine similarity of tokens after each attention "
        "sublayer and each block.\n"
        "- `figures/head_redundancy_vs_layer.svg`: mean L2 distance between heads' attention maps per layer.\n"
        "- `figures/elliptical_metric.png`: m of seed 0, averaged over test images: one row per (layer, head) "
        "from layer 1, head 0 down; one column per coordinate; colour 0 (dark) to 1 (yellow).\n"
        "- `figures/{standard,elliptical}_attention.png`: attention maps of test image 0, rows = layers, "
        "columns = heads, queries down, keys across, each panel on its own colour scale.\n"
        "- `figures/{standard,elliptical}_class_attention_layer{L}.png`: test image 0 and, per head, the class "
        "token's attention over the 7x7 patches.\n";
  return md;
}

int run_study_vit(const StudyFlags& flags) {
  const StudyPreset preset = study_preset(flags.preset);
  ELLIPSE_CHECK(!std::filesystem::exists(flags.out_dir + "/summary.json"), "study vit: {} already holds a study; "
                "choose another --out", flags.out_dir);
  std::filesystem::create_directories(flags.out_dir + "/figures");
  const LabeledImages test = load_fashion_mnist(flags.data_dir, "test");
  std::map<nn::AttentionKind, std::vector<RunResult>> results;
  for (std::int64_t seed = 0; seed < flags.seeds; ++seed)
    for (const auto kind : {nn::AttentionKind::standard, nn::AttentionKind::elliptical})
      results[kind].push_back(study_run(flags, preset, kind, static_cast<std::uint64_t>(seed), test, seed == 0));

  ordered_json summary;
  summary["preset"] = flags.preset;
  summary["seeds"] = flags.seeds;
  summary["config"] = preset.config;
  summary["epochs"] = preset.epochs;
  summary["batch"] = preset.batch;
  summary["standard"] = summarize(results[nn::AttentionKind::standard]);
  summary["elliptical"] = summarize(results[nn::AttentionKind::elliptical]);
  io::write_file_atomic(flags.out_dir + "/summary.json", summary.dump(2) + "\n");
  write_study_figures(flags.out_dir + "/figures", summary);
  io::write_file_atomic(flags.out_dir + "/report.md", study_report(summary, preset, flags, test.size()));
  fmt::print("clean test accuracy: standard {}%, elliptical {}%\nwrote {}/summary.json, report.md and figures/\n",
             percent(summary["standard"]["test_acc"]), percent(summary["elliptical"]["test_acc"]), flags.out_dir);
  return 0;
}

}  // namespace

void add_study_commands(CLI::App& app, Action& action) {
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
  i->callback([&action, inspect] { action = [inspect] { return run_inspect(*inspect); }; });

  auto* study = app.add_subcommand("study", "Train standard and elliptical attention side by side and compare them");
  study->require_subcommand(1);
  auto flags = std::make_shared<StudyFlags>();
  auto* v = study->add_subcommand("vit", "The ViT on Fashion-MNIST: accuracy, robustness, collapse, redundancy, m");
  v->add_option("--preset", flags->preset, "quick (vit-xs, 5 epochs) or full (vit-s, 30 epochs, augmented)")
      ->check(CLI::IsMember({"quick", "full"}))->capture_default_str();
  v->add_option("--seeds", flags->seeds, "Seeds per attention kind (0..N-1)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100}))->capture_default_str();
  v->add_option("--data", flags->data_dir, "Directory of the Fashion-MNIST .gz files")->capture_default_str();
  v->add_option("--out", flags->out_dir, "Output directory")->capture_default_str();
  v->callback([&action, flags] { action = [flags] { return run_study_vit(*flags); }; });
}

}  // namespace ellipse::cli
