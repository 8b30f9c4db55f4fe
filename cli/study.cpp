// `ellipse study vit` and `ellipse study gpt`: the flags of the library's studies (study/study.hpp), with
// progress bars for their training runs.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/error.hpp"
#include "study/study.hpp"

namespace ellipse::cli {

namespace {

constexpr const char* kDefaultText = "../shared/data/tinyshakespeare.txt";

// A bar per training run (items: "img" or "tok", for its speed); every other line printed once the bar is gone.
class StudyProgress {
 public:
  explicit StudyProgress(std::string items) : items_(std::move(items)) {}

  study::StudyCallbacks callbacks() {
    return {
        .on_train_step =
            [this](const std::string& run, const TrainProgress& p) {
              if (!bar_ || run != run_) {
                bar_.emplace(p.steps, 100);
                run_ = run;
              }
              bar_->update(p.step, p.elapsed_s,
                           fmt::format("{}  loss {:.4f}  {:.0f} {}/s", run, p.loss, p.items_per_s, items_));
            },
        .on_train_eval =
            [this](const std::string&, const std::string& line) {
              if (bar_)
                bar_->line(line);
              else
                message(line);
            },
        .on_message = [this](const std::string& line) { message(line); },
    };
  }

 private:
  void message(const std::string& line) {
    bar_.reset();
    fmt::print("{}\n", line);
    std::fflush(stdout);
  }

  std::string items_;
  std::optional<Progress> bar_;
  std::string run_;
};

}  // namespace

void add_study_vit_command(CLI::App& study, Action& action) {
  auto options = std::make_shared<study::StudyVitOptions>();
  auto attention = std::make_shared<std::string>("both");
  auto* v = study.add_subcommand("vit", "The ViT on Fashion-MNIST: accuracy, robustness, collapse, redundancy, m");
  v->add_option("--preset", options->preset,
                "quick (vit-xs, 5 epochs) or full (vit-s, 60 epochs, random shifts of up to 1 pixel and flips)")
      ->check(CLI::IsMember({"quick", "full"}))->capture_default_str();
  v->add_option("--attn", *attention,
                "Train and measure only this kind's runs (to split a study across processes or machines); "
                "the summary is written by a later call with both")
      ->check(CLI::IsMember({"standard", "elliptical", "both"}))->capture_default_str();
  v->add_option("--seeds", options->seeds, "Seeds per attention kind (0..N-1)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100}))->capture_default_str();
  v->add_option("--data", options->data_dir, "Directory of the Fashion-MNIST .gz files")->capture_default_str();
  v->add_option("--out", options->out_dir, "Output directory")->capture_default_str();
  add_device_option(*v, options->device);
  v->callback([&action, options, attention] {
    action = [options, attention] {
      use_device(options->device);
      options->only = *attention == "both" ? "" : *attention;
      StudyProgress progress("img");
      if (!study::run_vit_study(*options, progress.callbacks()).summarized)
        fmt::print("measured the {} runs in {}/runs; once the other kind's are measured too, run again without "
                   "--attn to write summary.json, report.md and the comparison figures\n",
                   options->only, options->out_dir);
      return 0;
    };
  });
}

void add_study_gpt_command(CLI::App& study, Action& action) {
  auto options = std::make_shared<study::StudyGptOptions>();
  options->text_path = kDefaultText;
  auto m_modes = std::make_shared<std::vector<std::string>>();
  auto* g = study.add_subcommand("gpt", "The character GPT: val loss clean and with a corrupted context, collapse, "
                                        "redundancy, m");
  g->add_option("--preset", options->preset, "quick (gpt-s, 1000 steps), full (gpt-s, 5000 steps) or smoke "
                                             "(gpt-tiny, 20 steps: for tests)")
      ->check(CLI::IsMember({"quick", "full", "smoke"}))->capture_default_str();
  g->add_option("--m-modes", *m_modes, "Add elliptical variants with these estimators of m, comma-separated: "
                                       "sequence, random (causal always runs, as `elliptical`)")
      ->delimiter(',')->check(CLI::IsMember({"causal", "sequence", "random"}));
  g->add_option("--seeds", options->seeds, "Seeds per variant (0..N-1)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100}))->capture_default_str();
  g->add_option("--data", options->text_path, "UTF-8 text file (first 90% train, last 10% val)")
      ->capture_default_str();
  g->add_option("--out", options->out_dir, "Output directory")->capture_default_str();
  add_device_option(*g, options->device);
  g->callback([&action, options, m_modes] {
    action = [options, m_modes] {
      use_device(options->device);
      // The default text is where the README's commands put Tiny Shakespeare: say so rather than just "no file".
      ELLIPSE_CHECK(std::filesystem::is_regular_file(options->text_path), "study gpt: --data {}: no such file; pass "
                    "a UTF-8 text file with --data FILE (the default, {}, is where the README's commands read Tiny "
                    "Shakespeare from, relative to the working directory)", options->text_path, kDefaultText);
      options->extra_metric_modes.clear();
      for (const auto& mode : *m_modes)
        if (mode != "causal") options->extra_metric_modes.push_back(nn::parse_metric_mode(mode));
      StudyProgress progress("tok");
      study::run_gpt_study(*options, progress.callbacks());
      return 0;
    };
  });
}

}  // namespace ellipse::cli
