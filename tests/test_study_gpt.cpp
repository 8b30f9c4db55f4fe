// `ellipse study gpt` (docs/study.md): the character corruption (corrupt_characters), the val loss with a
// context stream and a target stream (evaluate_gpt), and the command end to end with the smoke preset on a
// small patterned text: summary, report, figures, continuing an interrupted study, and its errors.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "cli_runner.hpp"
#include "core/io/npy.hpp"
#include "figure_checks.hpp"
#include "helpers.hpp"
#include "models/checkpoint.hpp"
#include "models/gpt_train.hpp"
#include "models/text.hpp"
#include "study/common.hpp"
#include "study/statistics.hpp"
#include "study/study.hpp"
#include "study_fixture.hpp"

using namespace ellipse;
using namespace ellipse::testing;
namespace fs = std::filesystem;
using Json = nlohmann::json;
using Ids = std::vector<std::int64_t>;

namespace {

// n ids cycling through 0..vocab-1 with a stride, so that every character occurs.
Ids cycling_ids(std::size_t n, std::int64_t vocab) {
  Ids ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = static_cast<std::int64_t>((i * 3 + i / 7) % static_cast<std::size_t>(vocab));
  return ids;
}

std::vector<std::size_t> changed_positions(const Ids& a, const Ids& b) {
  std::vector<std::size_t> at;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) at.push_back(i);
  return at;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// corrupt_characters

TEST_CASE("corrupt_characters: exactly round(p N) positions change, to other vocabulary characters") {
  const std::int64_t vocab = 7;
  for (const std::size_t n : {std::size_t{1000}, std::size_t{333}, std::size_t{3}}) {
    const Ids clean = cycling_ids(n, vocab);
    for (const double p : {0.0, 0.015, 0.05, 0.1, 0.5, 1.0}) {
      CAPTURE(n);
      CAPTURE(p);
      const Ids corrupted = corrupt_characters(clean, p, vocab, 42);
      REQUIRE(corrupted.size() == n);
      // Every chosen position gets a different character, so the changed positions are the chosen ones.
      CHECK(changed_positions(clean, corrupted).size() ==
            static_cast<std::size_t>(std::llround(p * static_cast<double>(n))));
      for (const auto id : corrupted) CHECK((id >= 0 && id < vocab));
    }
  }
  // Rounding: 0.5 * 3 = 1.5 rounds to 2; 0.015 * 100 = 1.5 rounds to 2 as well.
  CHECK(changed_positions(cycling_ids(3, 7), corrupt_characters(cycling_ids(3, 7), 0.5, 7, 1)).size() == 2);
  CHECK(changed_positions(cycling_ids(100, 7), corrupt_characters(cycling_ids(100, 7), 0.015, 7, 1)).size() == 2);
  // Two characters: a changed position can only hold the other one.
  const Ids binary = cycling_ids(200, 2);
  const Ids flipped = corrupt_characters(binary, 1.0, 2, 3);
  for (std::size_t i = 0; i < binary.size(); ++i) CHECK(flipped[i] == 1 - binary[i]);
}

TEST_CASE("corrupt_characters: deterministic per seed; positions and replacements uniform") {
  const Ids clean = cycling_ids(60000, 7);
  const Ids a = corrupt_characters(clean, 0.1, 7, 5);
  CHECK(corrupt_characters(clean, 0.1, 7, 5) == a);
  const Ids b = corrupt_characters(clean, 0.1, 7, 6);
  CHECK(b != a);
  CHECK(changed_positions(clean, b) != changed_positions(clean, a));

  // 6000 positions: about half in each half of the text (sd 39), and each of the 6 other characters about a
  // sixth of the replacements of a given original (1000 each, sd 29); 6 sd of slack.
  const auto positions = changed_positions(clean, a);
  const auto first_half = std::count_if(positions.begin(), positions.end(), [](std::size_t i) { return i < 30000; });
  CHECK(std::abs(static_cast<double>(first_half) - 3000.0) < 6 * 39);
  std::array<std::array<int, 7>, 7> counts{};  // [original][replacement]
  for (const auto i : positions) ++counts[static_cast<std::size_t>(clean[i])][static_cast<std::size_t>(a[i])];
  for (std::size_t from = 0; from < 7; ++from) {
    int total = 0;
    for (std::size_t to = 0; to < 7; ++to) total += counts[from][to];
    CHECK(counts[from][from] == 0);
    for (std::size_t to = 0; to < 7; ++to)
      if (to != from) CHECK(std::abs(counts[from][to] - total / 6.0) < 6 * std::sqrt(total / 6.0));
  }
}

TEST_CASE("corrupt_characters: bad arguments name the function and the problem") {
  const Ids ids{0, 1, 2};
  CHECK_ERROR(corrupt_characters(ids, 1.5, 3, 0), "corrupt_characters", "1.5", "[0, 1]");
  CHECK_ERROR(corrupt_characters(ids, -0.1, 3, 0), "corrupt_characters", "-0.1");
  CHECK_ERROR(corrupt_characters(ids, std::nan(""), 3, 0), "corrupt_characters", "nan");
  CHECK_ERROR(corrupt_characters({0, 0}, 0.5, 1, 0), "corrupt_characters", "vocabulary of 1");
  CHECK_ERROR(corrupt_characters(ids, 0.5, 2, 0), "corrupt_characters", "id 2 at position 2", "[0, 2)");
  CHECK(corrupt_characters({}, 0.5, 3, 0).empty());
}

// ---------------------------------------------------------------------------------------------------
// evaluate_gpt with a context and a target stream

TEST_CASE("evaluate_gpt(context, targets): the windows read the context and predict the targets") {
  GPTConfig config = gpt_preset("gpt-tiny", 7);  // T = 32
  config.attention = "elliptical";
  GPT model(config, 3);
  const std::int64_t t = config.seq_len;
  const Ids clean = cycling_ids(static_cast<std::size_t>(3 * t + 5), 7);  // 3 windows; 4 ids left over
  const Ids context = corrupt_characters(clean, 0.2, 7, 9);

  CHECK(evaluate_gpt(model, clean) == evaluate_gpt(model, clean, clean));
  // The same mean by hand: window w reads context[wT, wT + T) and predicts clean[wT + 1, wT + T + 1).
  double expected = 0;
  {
    NoGradGuard no_grad;
    for (std::int64_t w = 0; w < 3; ++w) {
      const auto at = static_cast<std::ptrdiff_t>(w * t);
      const Tensor logits = model.forward(from_vector(Ids(context.begin() + at, context.begin() + at + t), {1, t}));
      expected += cross_entropy(logits, from_vector(Ids(clean.begin() + at + 1, clean.begin() + at + t + 1), {1, t}))
                      .item() / 3;
    }
  }
  const double mixed = evaluate_gpt(model, context, clean, 2);
  CHECK(mixed == doctest::Approx(expected).epsilon(1e-6));
  CHECK(mixed != evaluate_gpt(model, clean, clean));
  CHECK(mixed != evaluate_gpt(model, clean, context));
  // Context beyond the last window's inputs is never read (position 3T is only ever a target).
  Ids longer = context;
  longer[static_cast<std::size_t>(3 * t)] = (longer[static_cast<std::size_t>(3 * t)] + 1) % 7;
  CHECK(evaluate_gpt(model, longer, clean, 2) == mixed);

  CHECK_ERROR(evaluate_gpt(model, context, Ids(clean.begin(), clean.end() - 1)), "eval", "the same length");
}

// ---------------------------------------------------------------------------------------------------
// ellipse study gpt

namespace {

const std::vector<std::string> kAllVariants{"standard", "elliptical", "elliptical-sequence", "elliptical-random"};
const std::vector<std::string> kCorruptionKeys{"0.015", "0.05", "0.1"};

std::vector<std::string> keys_of(const Json& j) {
  std::vector<std::string> keys;
  for (const auto& item : j.items()) keys.push_back(item.key());
  std::sort(keys.begin(), keys.end());
  return keys;
}

// The one value of a statistic over a single seed (its mean, with no spread).
double single_value(const Json& stat) {
  const auto values = stat.at("values").get<std::vector<double>>();
  REQUIRE(values.size() == 1);
  CHECK(stat["mean"].get<double>() == values[0]);
  CHECK(stat["std"].get<double>() == 0.0);
  return values[0];
}

// The val split of `text_path`, as the study reads it.
struct Val {
  CharTokenizer tokenizer;
  Ids ids;
};
Val val_split(const std::string& text_path) {
  const std::u32string text = decode_utf8(read_bytes(text_path), text_path);
  Val val{CharTokenizer::from_text(text), {}};
  val.ids = split_train_val(val.tokenizer.encode(text)).val;
  return val;
}

}  // namespace

TEST_CASE("cli: study gpt --preset smoke: summary, report, figures; a rerun continues; errors") {
  TempDir dir;
  const std::string text = dir / "text.txt", out = dir / "study";
  // 4000 characters: a val part of 400, 12 windows of gpt-tiny's 32.
  write_bytes(text, pattern_text(4000).substr(0, 4000));
  const Run run = run_ellipse({"study", "gpt", "--preset", "smoke", "--kinds",
                               "standard,elliptical,elliptical-sequence,elliptical-random", "--data", text, "--out", out});
  INFO(run.err);
  REQUIRE(run.status == 0);

  const std::string summary_text = read_bytes(out + "/summary.json");
  const Json summary = Json::parse(summary_text);
  CHECK(summary["preset"] == "smoke");
  CHECK(summary["seeds"] == 1);
  CHECK(summary["config"] == "gpt-tiny");
  CHECK(summary["steps"] == 20);
  CHECK(summary["variants"].get<std::vector<std::string>>() == kAllVariants);
  // Each variant against standard on the same seed, one difference each: no interval, no verdict.
  for (std::size_t i = 1; i < kAllVariants.size(); ++i) {
    const Json& compared = summary["comparisons"][kAllVariants[i]];
    CHECK(compared.size() == 10);  // clean, 3 corrupted, 3 costs, 3 of the layers
    CHECK(compared["corruption cost 0.1"]["differences"][0].get<double>() ==
          doctest::Approx((single_value(summary[kAllVariants[i]]["corrupted"]["0.1"]) -
                           single_value(summary[kAllVariants[i]]["val_loss"])) -
                          (single_value(summary["standard"]["corrupted"]["0.1"]) -
                           single_value(summary["standard"]["val_loss"])))
              .epsilon(1e-12));
    CHECK(compared["val_loss"]["verdict"] == "one seed: not judged");
  }

  const Val val = val_split(text);
  const double uniform_loss = std::log(static_cast<double>(val.tokenizer.size()));
  for (const auto& variant : kAllVariants) {
    CAPTURE(variant);
    const Json& v = summary[variant];
    CHECK(keys_of(v) == std::vector<std::string>{"collapse_attn", "collapse_block", "corrupted", "head_redundancy",
                                                 "train_seconds", "val_loss"});
    // Twenty steps barely move a model from its start near the uniform guess; corrupting more never helps
    // much (a tolerance for the random variant, whose m changes between passes).
    const double clean = single_value(v["val_loss"]);
    CHECK((clean > 0.5 * uniform_loss && clean < 1.5 * uniform_loss));
    CHECK(keys_of(v["corrupted"]) == kCorruptionKeys);
    for (const auto& key : kCorruptionKeys) {
      const double corrupted = single_value(v["corrupted"][key]);
      CHECK((std::isfinite(corrupted) && corrupted > clean - 0.01 && corrupted < 2 * uniform_loss));
    }
    for (const char* per_layer : {"collapse_attn", "collapse_block", "head_redundancy"}) {
      CAPTURE(per_layer);
      const auto means = v[per_layer]["mean"].get<std::vector<double>>();
      CHECK(means.size() == 2);  // gpt-tiny has 2 layers
      CHECK(v[per_layer]["std"].get<std::vector<double>>() == std::vector<double>(2, 0.0));
      for (double m : means) CHECK((std::isfinite(m) && m >= -1 - 1e-9 && (per_layer[0] == 'h' ? m >= 0 : m <= 1 + 1e-9)));
    }
    CHECK(single_value(v["train_seconds"]) > 0);
  }

  // The numbers recomputed here from the saved standard model: the clean val loss over the val windows (also
  // the trainer's last evaluation), and the corrupted ones with the corrupted text (seeded by mix64(seed, index
  // of p)) as the context and the clean text as the targets.
  {
    const std::string run_dir = out + "/runs/standard-seed0";
    LoadedGPT loaded = load_gpt(run_dir);
    const Json& standard = summary["standard"];
    CHECK(standard["val_loss"]["mean"].get<double>() == doctest::Approx(evaluate_gpt(*loaded.model, val.ids)).epsilon(1e-9));
    const std::string metrics = read_bytes(run_dir + "/metrics.jsonl");
    const Json last = Json::parse(metrics.substr(metrics.rfind('\n', metrics.size() - 2) + 1));
    CHECK(last["step"] == 20);
    CHECK(last["val_loss"].get<double>() == doctest::Approx(standard["val_loss"]["mean"].get<double>()).epsilon(1e-9));
    const std::vector<double> fractions{0.015, 0.05, 0.1};
    for (std::size_t i = 0; i < fractions.size(); ++i) {
      const Ids context = corrupt_characters(val.ids, fractions[i], val.tokenizer.size(), mix64(0, i));
      CHECK(standard["corrupted"][kCorruptionKeys[i]]["mean"].get<double>() ==
            doctest::Approx(evaluate_gpt(*loaded.model, context, val.ids)).epsilon(1e-9));
    }
  }

  const std::string report = read_bytes(out + "/report.md");
  CHECK(report.find("| metric | standard | elliptical | elliptical-sequence | elliptical-random |\n|---|---|---|---|---|\n") !=
        std::string::npos);
  const std::string table = report.substr(0, report.find("## What it shows"));
  const std::vector<std::string> rows{"| clean val loss |", "| val loss, p = 0.015 corrupted |",
                                      "| val loss, p = 0.05 corrupted |", "| val loss, p = 0.1 corrupted |",
                                      "| collapse, attention output, per layer |", "| collapse, block output, per layer |",
                                      "| head redundancy (L2), per layer |", "| training time (s) |",
                                      "| what p = 0.1 costs (corrupted - clean) |",
                                      "| collapse of block outputs, mean over layers |"};
  for (const auto& r : rows) {
    CAPTURE(r);
    const auto at = table.find("\n" + r);
    CHECK(at != std::string::npos);
    CHECK(table.find("\n" + r, at + 1) == std::string::npos);
  }
  CHECK(report.find("Note on `elliptical-sequence`") != std::string::npos);
  CHECK(report.find("not a fair comparison") != std::string::npos);
  CHECK(report.find("Note on `elliptical-random`") != std::string::npos);
  CHECK(report.find("--kinds standard,elliptical,elliptical-sequence,elliptical-random") != std::string::npos);
  CHECK(report.find("- clean val loss (lower is better): elliptical ") != std::string::npos);
  CHECK(report.find("### elliptical-random minus standard, seed by seed (1 seed)") != std::string::npos);

  // Every figure: the charts name each variant; the PNGs decode to the sizes their layout gives.
  const std::string figures = out + "/figures/";
  for (const char* name : {"val_loss_vs_corruption.svg", "collapse_vs_layer.svg", "head_redundancy_vs_layer.svg"}) {
    CAPTURE(name);
    const std::string svg = read_bytes(figures + name);
    check_well_formed(svg);
    for (const auto& variant : kAllVariants) CHECK(svg.find(">" + variant) != std::string::npos);
  }
  CHECK(read_bytes(figures + "val_loss_vs_corruption.svg").find(">0 (clean)<") != std::string::npos);
  for (const auto& variant : kAllVariants) {
    CAPTURE(variant);
    // The sample line is the val text's first 32 characters (the context length): 2 layers x 2 heads of 32 x 32.
    const Tensor maps = io::load_npy(figures + variant + "_attention.npy");
    REQUIRE(maps.shape() == Shape{2, 2, 32, 32});
    const auto values = to_dtype(maps, DType::f64).to_vector<double>();
    check_rows_sum_to_one(values, 2 * 2 * 32, 32);
    double above = 0;
    for (std::int64_t panel = 0; panel < 4; ++panel)
      for (std::int64_t i = 0; i < 32; ++i)
        for (std::int64_t j = i + 1; j < 32; ++j) above += std::abs(values[static_cast<std::size_t>((panel * 32 + i) * 32 + j)]);
    CHECK(above == 0.0);
    // Panels of 32 x 32 cells of 6 px, each coloured from 0 to its largest weight, framed.
    check_panels_drawn(decode_png(read_bytes(figures + variant + "_attention.png")), panels_of(maps),
                       {.cell_px = 6, .from_zero = true});
    if (variant == "standard") {
      CHECK_FALSE(fs::exists(figures + "standard_metric.png"));
      continue;
    }
    // Layer 1 is elliptical: one strip of 18 px cells per head (2), one cell per coordinate (16), 1 px
    // separators, coloured from 0 to 1.
    const auto metric = read_json(figures + variant + "_metric.json");
    REQUIRE(metric.size() == 1);
    std::vector<std::vector<figures::Grid>> strips;
    for (const auto& head : metric[0]["m"]) {
      const auto m = head.get<std::vector<double>>();
      REQUIRE(m.size() == 16);
      strips.push_back({{1, 16, std::vector<float>(m.begin(), m.end())}});
    }
    REQUIRE(strips.size() == 2);
    check_panels_drawn(decode_png(read_bytes(figures + variant + "_metric.png")), strips,
                       {.cell_px = 18, .separators = true, .range = figures::Range{0, 1}});
  }

  // Refused: an existing study, bad flags (2), a missing text (1, naming the file, creating nothing).
  check_bad({
      {{"study", "gpt", "--preset", "smoke", "--data", text, "--out", out}, 1, {"run_gpt_study", "already holds a study"}},
      {{"study", "gpt", "--preset", "bogus", "--data", text, "--out", dir / "s1"}, 2, {"--preset"}},
      {{"study", "gpt", "--kinds", "standard,bogus", "--data", text, "--out", dir / "s2"}, 1, {"'bogus' is not registered"}},
      {{"study", "gpt", "--kinds", "standard,elliptical-bogus", "--data", text, "--out", dir / "s3"}, 1,
       {"estimator 'bogus'"}},
      {{"study", "gpt", "--seeds", "0", "--data", text, "--out", dir / "s4"}, 2, {"--seeds"}},
      {{"study", "gpt", "--preset", "smoke", "--data", dir / "missing.txt", "--out", dir / "s5"}, 1,
       {"study gpt", "--data", "missing.txt"}},
  });
  CHECK(read_bytes(out + "/summary.json") == summary_text);
  for (const char* s : {"s1", "s2", "s3", "s4", "s5"}) CHECK_FALSE(fs::exists(dir / s));

  // An interrupted study continues: the standard run stopped halfway (as `train gpt --stop-after` leaves it)
  // resumes, the same model results; then, with its summary gone, a rerun reuses both finished runs.
  const std::string again = dir / "again";
  const Run half = run_ellipse({"train", "gpt", "--text", text, "--config", "gpt-tiny", "--steps", "20", "--eval-every",
                                "10", "--stop-after", "10", "--out", again + "/runs/standard-seed0"});
  INFO(half.err);
  REQUIRE(half.status == 0);
  const Run resumed = run_ellipse({"study", "gpt", "--preset", "smoke", "--data", text, "--out", again});
  INFO(resumed.err);
  REQUIRE(resumed.status == 0);
  CHECK(resumed.out.find("finished earlier") == std::string::npos);
  const Json resumed_summary = read_json(again + "/summary.json");
  CHECK(resumed_summary["variants"].get<std::vector<std::string>>() == std::vector<std::string>{"standard", "elliptical"});
  for (const char* variant : {"standard", "elliptical"}) {
    CAPTURE(variant);
    CHECK(resumed_summary[variant]["val_loss"] == summary[variant]["val_loss"]);
    CHECK(resumed_summary[variant]["corrupted"] == summary[variant]["corrupted"]);
  }
  // Without their measurements (study.json), the finished runs are reused, not trained again.
  fs::remove(again + "/summary.json");
  for (const char* variant : {"standard", "elliptical"})
    REQUIRE(fs::remove(fmt::format("{}/runs/{}-seed0/study.json", again, variant)));
  const Run reused = run_ellipse({"study", "gpt", "--preset", "smoke", "--data", text, "--out", again});
  INFO(reused.err);
  REQUIRE(reused.status == 0);
  for (const char* variant : {"standard", "elliptical"})
    CHECK(reused.out.find(fmt::format("{}-seed0: finished earlier, reusing {}/runs/{}-seed0", variant, again,
                                      variant)) != std::string::npos);
  const Json reused_summary = read_json(again + "/summary.json");
  for (const char* variant : {"standard", "elliptical"}) {
    CAPTURE(variant);
    CHECK(reused_summary[variant]["val_loss"] == resumed_summary[variant]["val_loss"]);
    CHECK(reused_summary[variant]["train_seconds"] == resumed_summary[variant]["train_seconds"]);
  }

  // With them, a rerun measures nothing: it needs neither a checkpoint nor a model, and writes the same
  // summary.json byte for byte.
  const std::string reused_text = read_bytes(again + "/summary.json");
  fs::remove(again + "/summary.json");
  for (const char* variant : {"standard", "elliptical"})
    for (const char* file : {"model.safetensors", "train_state.safetensors"})
      REQUIRE(fs::remove(fmt::format("{}/runs/{}-seed0/{}", again, variant, file)));
  const Run cached = run_ellipse({"study", "gpt", "--preset", "smoke", "--data", text, "--out", again});
  INFO(cached.err);
  REQUIRE(cached.status == 0);
  CHECK(cached.out.find("finished earlier") == std::string::npos);
  CHECK(read_bytes(again + "/summary.json") == reused_text);
}

TEST_CASE("run_gpt_study from C++: a registered kind of one's own beside standard; callbacks; option errors") {
  // A kind of research code's own (here standard attention under another name) is studied like a built-in one.
  nn::register_attention("study-test-kind",
                         [](const nn::AttentionSlot& slot) { return nn::make_attention("standard", slot); });
  TempDir dir;
  const std::string text = dir / "text.txt";
  write_bytes(text, pattern_text(4000).substr(0, 4000));
  study::StudyGptOptions options;
  options.preset = "smoke";
  options.attention = {"standard", "study-test-kind"};
  options.text_path = text;
  options.out_dir = dir / "study";
  std::int64_t steps = 0;
  std::vector<std::string> messages;
  study::StudyCallbacks callbacks;
  callbacks.on_train_step = [&](const std::string& run, const TrainProgress& p) {
    CHECK((run == "standard-seed0" || run == "study-test-kind-seed0"));
    CHECK(p.steps == 20);
    ++steps;
  };
  callbacks.on_message = [&](const std::string& line) { messages.push_back(line); };
  const study::StudyResult result = study::run_gpt_study(options, callbacks);
  CHECK(result.summarized);
  CHECK(result.summary_path == options.out_dir + "/summary.json");
  CHECK(steps == 2 * 20);
  REQUIRE(messages.size() == 3);  // one line per run, then the headline
  CHECK(messages[2].find("clean val loss: standard ") == 0);
  const Json summary = read_json(result.summary_path);
  CHECK(summary["variants"].get<std::vector<std::string>>() == std::vector<std::string>{"standard", "study-test-kind"});
  const std::string report = read_bytes(result.report_path);
  CHECK(report.find("# Standard vs study-test-kind attention") == 0);
  CHECK(report.find("| metric | standard | study-test-kind |") != std::string::npos);
  CHECK(report.find("`elliptical` estimates m") == std::string::npos);
  CHECK(report.find("Run from C++: `study::run_gpt_study` with attention kinds standard, study-test-kind.") !=
        std::string::npos);

  auto fails_with = [&](auto change, const std::string& message) {
    study::StudyGptOptions bad = options;
    bad.out_dir = dir / "bad";
    change(bad);
    CAPTURE(message);
    CHECK_THROWS_WITH(study::run_gpt_study(bad), doctest::Contains(message.c_str()));
  };
  fails_with([](auto& o) { o.attention = {"standard", "bogus"}; }, "run_gpt_study: attention kind 'bogus' is not registered");
  fails_with([](auto& o) { o.attention = {"standard", "standard"}; }, "attention names 'standard' twice");
  fails_with([](auto& o) { o.attention = {}; }, "attention names no kind");
  fails_with([](auto& o) { o.seeds = 0; }, "run_gpt_study: seeds is 0; expected 1 to 100");
  fails_with([](auto& o) { o.preset = "huge"; }, "run_gpt_study: preset 'huge' is unknown");
  fails_with([](auto& o) { o.attention = {"standard", "elliptical-causal"}; },
             "run_gpt_study: attention variant 'elliptical-causal' is 'elliptical' itself");
  fails_with([](auto& o) { o.only = "elliptical"; }, "run_gpt_study: only is 'elliptical'; expected empty or one of");
  fails_with([&](auto& o) { o.text_path = dir / "missing.txt"; }, "text_path '" + (dir / "missing.txt") + "' is not a file");
  fails_with([&](auto& o) { o.out_dir = options.out_dir; }, "already holds a study");
  CHECK_FALSE(fs::exists(dir / "bad"));
}

// ---------------------------------------------------------------------------------------------------
// statistics over seeds

TEST_CASE("student_t_quantile: table values, the closed forms of 1 and 2 degrees of freedom, symmetry; errors") {
  // Two-sided 95% critical values from published tables (9 significant digits).
  const std::vector<std::pair<double, double>> table{{1, 12.7062047}, {2, 4.30265273}, {3, 3.18244631},
                                                     {4, 2.77644511}, {9, 2.26215716}, {29, 2.04522964},
                                                     {99, 1.98421695}};
  for (const auto& [dof, t] : table) {
    CAPTURE(dof);
    CHECK(study::student_t_quantile(0.975, dof) == doctest::Approx(t).epsilon(1e-8));
    CHECK(study::student_t_cdf(t, dof) == doctest::Approx(0.975).epsilon(1e-8));
  }
  for (double p : {0.6, 0.9, 0.999}) {
    CAPTURE(p);
    CHECK(study::student_t_quantile(p, 1) == doctest::Approx(std::tan(M_PI * (p - 0.5))).epsilon(1e-12));
    CHECK(study::student_t_quantile(p, 2) == doctest::Approx((2 * p - 1) / std::sqrt(2 * p * (1 - p))).epsilon(1e-12));
    CHECK(study::student_t_quantile(1 - p, 5.5) == doctest::Approx(-study::student_t_quantile(p, 5.5)).epsilon(1e-12));
  }
  CHECK(study::student_t_cdf(0, 3) == 0.5);
  CHECK_THROWS_WITH(study::student_t_quantile(1, 3), doctest::Contains("student_t_quantile: p is 1; expected 0 < p < 1"));
  CHECK_THROWS_WITH(study::student_t_quantile(0.5, 0), doctest::Contains("dof is 0; expected a positive"));
  CHECK_THROWS_WITH(study::student_t_cdf(std::nan(""), 3), doctest::Contains("student_t_cdf: t is NaN"));
}

TEST_CASE("compare_paired: differences, spread, 95% interval and verdict against hand-computed values") {
  using study::Better;
  using study::Verdict;
  // d = 0.03, 0.02, 0.01: mean 0.02, sample std 0.01, half-width 4.30265273 * 0.01 / sqrt(3) = 0.0248414.
  auto loose = study::compare_paired({0.80, 0.82, 0.81}, {0.83, 0.84, 0.82}, Better::higher);
  CHECK(loose.differences.size() == 3);
  CHECK(loose.difference.mean == doctest::Approx(0.02).epsilon(1e-12));
  CHECK(loose.difference.std == doctest::Approx(0.01).epsilon(1e-9));
  REQUIRE(loose.ci95);
  CHECK(loose.ci95->lo == doctest::Approx(0.02 - 0.0248414).epsilon(1e-5));
  CHECK(loose.ci95->hi == doctest::Approx(0.02 + 0.0248414).epsilon(1e-5));
  CHECK(loose.verdict == Verdict::no_difference);
  CHECK(study::verdict_name(loose.verdict) == "no difference detected");
  // d = 0.031, 0.030, 0.029: half-width 4.30265273 * 0.001 / sqrt(3) = 0.00248414, so [0.0275, 0.0325].
  auto tight = study::compare_paired({0.80, 0.80, 0.80}, {0.831, 0.830, 0.829}, Better::higher);
  REQUIRE(tight.ci95);
  CHECK(tight.ci95->lo == doctest::Approx(0.03 - 0.00248414).epsilon(1e-5));
  CHECK(tight.verdict == Verdict::better);
  // The same numbers where lower is better (a loss) are worse; mirrored differences are better.
  CHECK(study::compare_paired({0.80, 0.80, 0.80}, {0.831, 0.830, 0.829}, Better::lower).verdict == Verdict::worse);
  CHECK(study::compare_paired({0.831, 0.830, 0.829}, {0.80, 0.80, 0.80}, Better::lower).verdict == Verdict::better);
  // Two seeds: t(0.975, 1) = 12.7062047; d = 1, 3: mean 2, std sqrt(2), half-width 12.7062047.
  auto two = study::compare_paired({0, 0}, {1, 3}, Better::higher);
  CHECK(two.ci95->hi == doctest::Approx(2 + 12.7062047).epsilon(1e-8));
  CHECK(two.verdict == Verdict::no_difference);
  // A clear but negligible difference is none.
  CHECK(study::compare_paired({0.80, 0.80, 0.80}, {0.831, 0.830, 0.829}, Better::higher, 0.05).verdict ==
        Verdict::no_difference);
  CHECK_THROWS_WITH(study::compare_paired({1}, {1}, Better::higher, -1), doctest::Contains("negligible is -1"));
  // Identical runs differ by nothing: an interval of [0, 0] holds 0.
  CHECK(study::compare_paired({1, 2}, {1, 2}, Better::higher).verdict == Verdict::no_difference);
  // One seed: the difference, but no interval and no verdict.
  auto one = study::compare_paired({0.5}, {0.7}, Better::higher);
  CHECK(one.difference.mean == doctest::Approx(0.2));
  CHECK(one.difference.std == 0);
  CHECK_FALSE(one.ci95);
  CHECK(one.verdict == Verdict::one_seed);
  CHECK_THROWS_WITH(study::compare_paired({1, 2}, {1}, Better::higher),
                    doctest::Contains("compare_paired: 2 baseline and 1 variant values"));
  CHECK_THROWS_WITH(study::compare_paired({1, INFINITY}, {1, 2}, Better::higher),
                    doctest::Contains("seed 1 has baseline inf"));
}

TEST_CASE("compare_variants and comparison_tables: a difference under half the last printed digit is none; the "
          "interval prints low end first; the seeds' range") {
  using nlohmann::ordered_json;
  // Accuracy in points with 2 decimals: the last printed digit is 0.0001 of a fraction, half of it 0.00005.
  const study::Measurement accuracy{.key = "acc", .label = "accuracy", .better = study::Better::higher,
                                    .unit = {.scale = 100, .decimals = 2, .unit = "points"},
                                    .per_seed = [](const ordered_json& variant) {
                                      return variant["acc"].get<std::vector<double>>();
                                    }};
  ordered_json summary;
  summary["base"]["acc"] = {0.5, 0.6, 0.7};
  summary["above"]["acc"] = {0.50007, 0.60007, 0.70007};  // +0.007 points on every seed: printed +0.01
  summary["below"]["acc"] = {0.50003, 0.60003, 0.70003};  // +0.003 points on every seed: printed +0.00
  summary["spread"]["acc"] = {0.51, 0.62, 0.73};          // d = 0.01, 0.02, 0.03: [-0.0048414, 0.0448414]
  const std::vector<study::ComparedPair> pairs{
      {"above", "base", "above"}, {"below", "base", "below"}, {"spread", "base", "spread"}};
  const ordered_json comparisons = study::compare_variants(summary, pairs, {accuracy});
  CHECK(comparisons["above"]["acc"]["verdict"] == "better");
  CHECK(comparisons["below"]["acc"]["verdict"] == "no difference detected");
  CHECK(comparisons["spread"]["acc"]["verdict"] == "no difference detected");
  const std::string tables = study::comparison_tables(comparisons, pairs, {accuracy}, 3);
  CAPTURE(tables);
  CHECK(tables.find("[-0.48, +4.48]") != std::string::npos);

  // 1 and 100 seeds make a study; 0 and 101 do not.
  for (const std::int64_t seeds : {1, 100})
    CHECK_NOTHROW(study::check_study_options("f", {"standard"}, nn::MetricMode::causal, seeds, "", "no-such-dir"));
  for (const std::int64_t seeds : {0, 101}) {
    const std::string message = fmt::format("f: seeds is {}; expected 1 to 100", seeds);
    CHECK_THROWS_WITH(study::check_study_options("f", {"standard"}, nn::MetricMode::causal, seeds, "", "no-such-dir"),
                      doctest::Contains(message.c_str()));
  }
}

TEST_CASE("run_gpt_study over two seeds with elliptical-random: paired statistics; an interrupted study resumes "
          "to the same summary, byte for byte from its caches") {
  TempDir dir;
  const std::string text = dir / "text.txt";
  write_bytes(text, pattern_text(4000).substr(0, 4000));
  study::StudyGptOptions options;
  options.preset = "smoke";
  options.attention = {"standard", "elliptical", "elliptical-random"};
  options.seeds = 2;
  options.text_path = text;

  options.out_dir = dir / "whole";
  const study::StudyResult whole = study::run_gpt_study(options);
  REQUIRE(whole.summarized);
  const Json summary = read_json(whole.summary_path);
  CHECK(summary["variants"].get<std::vector<std::string>>() == options.attention);
  for (const auto& variant : options.attention)
    for (int seed = 0; seed < 2; ++seed)
      CHECK(fs::exists(fmt::format("{}/runs/{}-seed{}/model.safetensors", options.out_dir, variant, seed)));

  // The statistics recomputed from the per-seed values: t(0.975, 1) = 12.7062047 for two seeds.
  for (const char* variant : {"elliptical", "elliptical-random"}) {
    CAPTURE(variant);
    const auto base = summary["standard"]["val_loss"]["values"].get<std::vector<double>>();
    const auto ours = summary[variant]["val_loss"]["values"].get<std::vector<double>>();
    REQUIRE((base.size() == 2 && ours.size() == 2));
    const double d0 = ours[0] - base[0], d1 = ours[1] - base[1];
    const double mean = (d0 + d1) / 2, sd = std::abs(d0 - d1) / std::sqrt(2.0);
    const Json& c = summary["comparisons"][variant]["val_loss"];
    CHECK(c["differences"].get<std::vector<double>>() == std::vector<double>{d0, d1});
    CHECK(c["mean"].get<double>() == doctest::Approx(mean).epsilon(1e-12));
    CHECK(c["std"].get<double>() == doctest::Approx(sd).epsilon(1e-9));
    const double half = 12.7062047 * sd / std::sqrt(2.0);
    CHECK(c["ci95"][0].get<double>() == doctest::Approx(mean - half).epsilon(1e-7));
    CHECK(c["ci95"][1].get<double>() == doctest::Approx(mean + half).epsilon(1e-7));
    const bool holds_zero = mean - half <= 0 && mean + half >= 0;
    CHECK(c["verdict"] == (holds_zero ? "no difference detected" : mean + half < 0 ? "better" : "worse"));
    const auto std_of_values = summary[variant]["val_loss"]["std"].get<double>();
    CHECK(std_of_values == doctest::Approx(std::abs(ours[0] - ours[1]) / std::sqrt(2.0)).epsilon(1e-9));
  }
  // The ablation pair: elliptical minus elliptical-random, from the same per-seed values.
  const Json& ablation = summary["comparisons"]["elliptical vs elliptical-random"]["val_loss"];
  const auto e = summary["elliptical"]["val_loss"]["values"].get<std::vector<double>>();
  const auto r = summary["elliptical-random"]["val_loss"]["values"].get<std::vector<double>>();
  CHECK(ablation["differences"].get<std::vector<double>>() == std::vector<double>{e[0] - r[0], e[1] - r[1]});
  CHECK(summary["comparisons"].size() == 3);
  const std::string report = read_bytes(whole.report_path);
  CHECK(report.find("### elliptical-random minus standard, seed by seed (2 seeds)") != std::string::npos);
  CHECK(report.find("### elliptical minus elliptical-random, seed by seed (2 seeds)") != std::string::npos);
  CHECK(report.find("--kinds standard,elliptical,elliptical-random") != std::string::npos);
  CHECK(report.find("over 2 seeds: **") != std::string::npos);

  // Interrupted during seed 1 of the random ablation (after its checkpoint at step 10), then called again: the
  // run resumes from its checkpoint, and the summary equals the uninterrupted one but for the training times.
  options.out_dir = dir / "interrupted";
  study::StudyCallbacks stop;
  stop.on_train_step = [](const std::string& run, const TrainProgress& p) {
    if (run == "elliptical-random-seed1" && p.step == 15) throw std::runtime_error("interrupted");
  };
  CHECK_THROWS_WITH(study::run_gpt_study(options, stop), "interrupted");
  CHECK_FALSE(fs::exists(options.out_dir + "/summary.json"));
  std::vector<std::pair<std::string, std::int64_t>> steps;
  study::StudyCallbacks record;
  record.on_train_step = [&](const std::string& run, const TrainProgress& p) { steps.emplace_back(run, p.step); };
  const study::StudyResult resumed = study::run_gpt_study(options, record);
  REQUIRE(resumed.summarized);
  Json resumed_summary = read_json(resumed.summary_path), whole_summary = summary;
  for (Json* s : {&resumed_summary, &whole_summary})
    for (const auto& variant : options.attention) (*s)[variant].erase("train_seconds");
  CHECK(resumed_summary == whole_summary);
  // Every other run was measured before the interruption; the interrupted one trains on from its checkpoint.
  REQUIRE_FALSE(steps.empty());
  CHECK(steps.front() == std::pair<std::string, std::int64_t>{"elliptical-random-seed1", 11});
  CHECK(steps.back() == std::pair<std::string, std::int64_t>{"elliptical-random-seed1", 20});
  CHECK(steps.size() == 10);
  // Its training time counts both parts: it goes on from the elapsed_s of its checkpoint's line (step 10).
  const std::string lines = read_bytes(options.out_dir + "/runs/elliptical-random-seed1/metrics.jsonl");
  REQUIRE(std::count(lines.begin(), lines.end(), '\n') == 2);  // after steps 10 and 20
  const std::size_t first_end = lines.find('\n');
  const double at_checkpoint = Json::parse(lines.substr(0, first_end))["elapsed_s"].get<double>();
  const double at_end = Json::parse(lines.substr(first_end + 1))["elapsed_s"].get<double>();
  CHECK(at_checkpoint > 0);
  CHECK(at_end > at_checkpoint);
  CHECK(read_json(resumed.summary_path)["elliptical-random"]["train_seconds"]["values"][1].get<double>() == at_end);

  // From the run directories' caches alone, the summary and report come back byte for byte.
  const std::string resumed_text = read_bytes(resumed.summary_path), report_text = read_bytes(resumed.report_path);
  fs::remove(resumed.summary_path);
  const study::StudyResult again = study::run_gpt_study(options);
  CHECK(read_bytes(again.summary_path) == resumed_text);
  CHECK(read_bytes(again.report_path) == report_text);
}
