#pragma once
// Each file in cli/ registers its subcommands here; the chosen one's action runs after parsing.
#include <CLI/CLI.hpp>

#include <functional>

namespace ellipse::cli {

using Action = std::function<int()>;

void add_demo_command(CLI::App& app, Action& action);
// `train gpt`, `eval gpt`, `sample` (train and eval are shared with other models: pass their parents).
void add_gpt_commands(CLI::App& train, CLI::App& eval, CLI::App& app, Action& action);
void add_bench_command(CLI::App& app, Action& action);

}  // namespace ellipse::cli
