// `ellipse study vit` and `ellipse study gpt`: the flags of the library's studies (study/study.hpp), with
// progress bars for their training runs. Under mpirun the ranks share out the runs.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/error.hpp"
#include "dist/communicator.hpp"
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
                bar_.emplace(100);
                run_ = run;
              }
              bar_->update(p, fmt::format("{}  loss {:.4f}  {:.0f} {}/s", run, p.loss, p.items_per_s, items_));
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

// The flags both studies share: the variants, one variant's runs only, the seeds and the output directory.
void add_shared_study_flags(CLI::App& command, std::vector<std::string>& kinds, std::string& only, std::int64_t& seeds,
                            std::string& out_dir) {
  command.add_option("--kinds", kinds, "Variants to compare, comma-separated, the first the baseline: attention "
                                       "kinds (standard, elliptical) and elliptical-MODE for another estimator of m "
                                       "(sequence, causal, random; e.g. elliptical-random, the random-m ablation)")
      ->delimiter(',')->capture_default_str();
  command.add_option("--only", only, "Train and measure only this variant's runs (to split a study across processes "
                                     "or machines); a later call without it writes the summary");
  command.add_option("--seeds", seeds, "Seeds per variant (0..N-1)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100}))->capture_default_str();
  command.add_option("--out", out_dir, "Output directory")->capture_default_str();
}

// Runs a study's call on this process's share of the runs (under mpirun: the ranks deal out the runs, rank 0
// writes the summary); only rank 0 draws progress bars, the others print their runs' results with their rank.
template <typename Options, typename Study>
void run_study(Options& options, const char* items, Study&& study) {
  dist::Communicator& world = dist::world();
  options.communicator = &world;
  use_device(world.rank_device(options.device));
  StudyProgress progress(items);
  study::StudyCallbacks callbacks = progress.callbacks();
  if (world.rank() != 0) {
    const int rank = world.rank();
    callbacks = {.on_train_step = {}, .on_train_eval = {}, .on_message = [rank](const std::string& line) {
                   fmt::print("[rank {}] {}\n", rank, line);
                   std::fflush(stdout);
                 }};
  }
  if (!study(options, callbacks).summarized && world.rank() == 0)
    fmt::print("measured the {} runs in {}/runs; once every variant's are measured, run again without --only to "
               "write summary.json, report.md and the comparison figures\n",
               options.only, options.out_dir);
}

}  // namespace

void add_study_vit_command(CLI::App& study, Action& action) {
  auto options = std::make_shared<study::StudyVitOptions>();
  auto* v = study.add_subcommand("vit", "The ViT on Fashion-MNIST: accuracy, robustness, collapse, redundancy, m");
  v->add_option("--preset", options->preset,
                "quick (vit-xs, 5 epochs) or full (vit-s, 60 epochs, random shifts of up to 1 pixel and flips)")
      ->check(CLI::IsMember({"quick", "full"}))->capture_default_str();
  add_shared_study_flags(*v, options->attention, options->only, options->seeds, options->out_dir);
  v->add_option("--data", options->data_dir, "Directory of the Fashion-MNIST .gz files")->capture_default_str();
  add_device_option(*v, options->device);
  v->callback([&action, options] {
    action = [options] {
      run_study(*options, "img", study::run_vit_study);
      return 0;
    };
  });
}

void add_study_gpt_command(CLI::App& study, Action& action) {
  auto options = std::make_shared<study::StudyGptOptions>();
  options->text_path = kDefaultText;
  auto* g = study.add_subcommand("gpt", "The character GPT: val loss clean and with a corrupted context, collapse, "
                                        "redundancy, m");
  g->add_option("--preset", options->preset, "quick (gpt-s, 1000 steps), full (gpt-s, 5000 steps) or smoke "
                                             "(gpt-tiny, 20 steps: for tests)")
      ->check(CLI::IsMember({"quick", "full", "smoke"}))->capture_default_str();
  add_shared_study_flags(*g, options->attention, options->only, options->seeds, options->out_dir);
  g->add_option("--data", options->text_path, "UTF-8 text file (first 90% train, last 10% val)")
      ->capture_default_str();
  add_device_option(*g, options->device);
  g->callback([&action, options] {
    action = [options] {
      // The default text is where the README's commands put Tiny Shakespeare: say so rather than just "no file".
      ELLIPSE_CHECK(std::filesystem::is_regular_file(options->text_path), "study gpt: --data {}: no such file; pass "
                    "a UTF-8 text file with --data FILE (the default, {}, is where the README's commands read Tiny "
                    "Shakespeare from, relative to the working directory)", options->text_path, kDefaultText);
      run_study(*options, "tok", study::run_gpt_study);
      return 0;
    };
  });
}

}  // namespace ellipse::cli
