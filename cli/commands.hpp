#pragma once
// Each file in cli/ registers its subcommands here; the chosen one's action runs after parsing.
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <string_view>

namespace ellipse::cli {

using Action = std::function<int()>;

void add_demo_command(CLI::App& app, Action& action);
// `train gpt`, `eval gpt`, `sample` (train and eval are shared with other models: pass their parents).
void add_gpt_commands(CLI::App& train, CLI::App& eval, CLI::App& app, Action& action);
// `train vit`, `eval vit`.
void add_vit_commands(CLI::App& train, CLI::App& eval, Action& action);
void add_bench_command(CLI::App& app, Action& action);

// Settles a training command's output directory: --resume DIR continues there (an --out that differs is
// an error); otherwise --out, or `default_dir`.
void resolve_run_dir(std::string& out_dir, bool& resume, const std::string& resume_dir, std::string_view command,
                     std::string_view default_dir);

}  // namespace ellipse::cli
