#pragma once
// Each file in cli/ registers its subcommands here; the chosen one's action runs after parsing.
#include <CLI/CLI.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <string_view>

#include "core/device.hpp"
#include "dist/communicator.hpp"
#include "nn/attention.hpp"

namespace ellipse::cli {

using Action = std::function<int()>;

// CLI::Range lets "nan" through (every comparison with NaN is false); add this check to floating options.
inline CLI::Validator not_nan() {
  return CLI::Validator(
      [](std::string& text) {
        double value = 0;
        return CLI::detail::lexical_cast(text, value) && std::isnan(value) ? std::string("NaN is not allowed")
                                                                            : std::string();
      },
      "");
}

// --device into `device`: cpu, cuda or cuda:N; any other name is a usage error.
CLI::Option* add_device_option(CLI::App& command, Device& device);
// --tf32 into `on`, for use_device.
CLI::Option* add_tf32_flag(CLI::App& command, bool& on);
// Every command with --device calls this before any work: an unusable device (no CUDA backend in this build,
// no GPU) fails with the backend's reason (exit 1). With `tf32` (--tf32), turns on TF32 matrix products there.
void use_device(Device device, bool tf32 = false);

void add_demo_command(CLI::App& app, Action& action);
// `train gpt`, `eval gpt`, `sample` (train and eval are shared with other models: pass their parents).
void add_gpt_commands(CLI::App& train, CLI::App& eval, CLI::App& app, Action& action);
// `train vit`, `eval vit`.
void add_vit_commands(CLI::App& train, CLI::App& eval, Action& action);
void add_inspect_command(CLI::App& app, Action& action);
// `study vit` and `study gpt` (pass the parent `study` command).
void add_study_vit_command(CLI::App& study, Action& action);
void add_study_gpt_command(CLI::App& study, Action& action);
void add_bench_command(CLI::App& app, Action& action);

// Settles a training command's output directory: --resume DIR continues there (an --out that differs is
// an error); otherwise --out, or `default_dir`.
void resolve_run_dir(std::string& out_dir, bool& resume, const std::string& resume_dir, std::string_view command,
                     std::string_view default_dir);

// Settles what `train gpt` and `train vit` take alike from their flags (attn, m_mode, batch, resume, tf32) into
// flags.options. Under mpirun the run is data-parallel over the ranks, rank 0 writing and printing; asked for cuda,
// the ranks of a machine spread over its GPUs (rank_device), with NCCL between them where it is built.
template <typename TrainFlags>
void settle_train_options(TrainFlags& flags, std::string_view command, std::string_view default_dir) {
  auto& o = flags.options;
  o.communicator = &dist::world(o.device);
  o.device = o.communicator->rank_device(o.device);
  use_device(o.device, flags.tf32);
  o.attention = nn::parse_attention_kind(flags.attn);
  if (!flags.m_mode.empty()) o.metric = nn::parse_metric_mode(flags.m_mode);
  if (flags.batch > 0) o.batch = flags.batch;
  resolve_run_dir(o.out_dir, o.resume, flags.resume, command, default_dir);
}

}  // namespace ellipse::cli
