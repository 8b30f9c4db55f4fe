// The ellipse command-line program. Exit codes: 0 success, 1 a runtime error (bad file, bad data, a
// diverging run), 2 a usage error (unknown flag, bad value). Errors go to stderr as "ellipse: error: ...".
// Output for machines (eval, bench, train --json) is JSON lines on stdout; progress bars appear only on a terminal and
// use no colour, so NO_COLOR has nothing to turn off.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>

#include "backends/backend.hpp"
#include "cli/commands.hpp"
#include "core/error.hpp"
#include "dist/communicator.hpp"

namespace {
// OpenBLAS's threads (f64 products, and f32 ones on processors without AVX-512) are libgomp's, which reads
// OMP_WAIT_POLICY once, when it is loaded. Its default lets idle workers spin, and on a machine running
// anything else they take the cores from the threads doing the work (measured on 2 cores beside one busy
// process: a gpt-s step 2.3 s spinning, 0.55 s passive). Unless the user chose a policy, the program
// restarts itself once with the passive one; if that fails it simply goes on.
void prefer_passive_openmp_workers(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv);
}

// Every command, at any depth, answers --help and --version and states the exit codes in its help.
void add_conventions(CLI::App& app) {
  app.footer("Exit status: 0 success, 1 runtime error (bad file or data, a diverging run), 2 usage error.");
  app.set_version_flag("--version", "ellipse " ELLIPSE_VERSION);
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) add_conventions(*sub);
}
}  // namespace

namespace ellipse::cli {
CLI::Option* add_device_option(CLI::App& command, Device& device) {
  const CLI::Validator device_name(
      [](std::string& text) {
        try {
          Device::parse(text);
          return std::string();
        } catch (const Error& e) {
          return std::string(e.what());
        }
      },
      "cpu|cuda|cuda:N");
  // Validated before the function runs, so parsing cannot throw there.
  return command
      .add_option_function<std::string>(
          "--device", [&device](const std::string& text) { device = Device::parse(text); },
          "Device to run on")
      ->check(device_name)
      ->default_str(device.str());
}

CLI::Option* add_tf32_flag(CLI::App& command, bool& on) {
  return command.add_flag("--tf32", on, "CUDA: TF32 tensor-core matrix products (faster, about 10 mantissa bits)");
}

void use_device(Device device, bool tf32) {
  Backend& backend = backend_for(device);
  if (tf32) backend.set_tf32(true);
}

void resolve_run_dir(std::string& out_dir, bool& resume, const std::string& resume_dir, std::string_view command,
                     std::string_view default_dir) {
  if (!resume_dir.empty()) {
    if (!out_dir.empty() && std::filesystem::path(out_dir) != std::filesystem::path(resume_dir))
      fail("{}: --resume {} continues in that directory; --out {} differs", command, resume_dir, out_dir);
    out_dir = resume_dir;
    resume = true;
  }
  if (out_dir.empty()) out_dir = default_dir;
}
}  // namespace ellipse::cli

int main(int argc, char** argv) {
  prefer_passive_openmp_workers(argv);
  using namespace ellipse::cli;
  CLI::App app{"ellipse: a from-scratch deep learning library with elliptical attention"};
  app.require_subcommand(1);
  app.fallthrough(false);

  Action action;
  auto* train = app.add_subcommand("train", "Train a model");
  train->require_subcommand(1);
  auto* eval = app.add_subcommand("eval", "Evaluate a trained model");
  eval->require_subcommand(1);
  add_demo_command(app, action);
  add_gpt_commands(*train, *eval, app, action);
  add_vit_commands(*train, *eval, action);
  add_inspect_command(app, action);
  auto* study = app.add_subcommand("study", "Train standard and elliptical attention side by side and compare them");
  study->require_subcommand(1);
  add_study_vit_command(*study, action);
  add_study_gpt_command(*study, action);
  add_bench_command(app, action);
  add_conventions(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help, the version, or the error
    return code == 0 ? 0 : 2;
  }
  std::string error;
  try {
    // Several processes of any other command would each do the whole job and write the same files.
    const bool multi_process = train->got_subcommand("gpt") || train->got_subcommand("vit") ||
                               study->got_subcommand("gpt") || study->got_subcommand("vit");
    if (ellipse::dist::launched_by_mpi() && !multi_process && ellipse::dist::world().size() > 1)
      ellipse::fail("only `ellipse train gpt|vit` and `ellipse study gpt|vit` run over several MPI ranks; run this "
                    "command as one process");
    return action ? action() : 0;
  } catch (const std::exception& e) {
    error = e.what();
  }
  // Under an MPI launcher the other ranks may be waiting for this one in a collective: end them all.
  if (ellipse::dist::launched_by_mpi() && ellipse::dist::mpi_built()) ellipse::dist::world().abort(1, "ellipse: error: " + error);
  std::fprintf(stderr, "ellipse: error: %s\n", error.c_str());
  return 1;
}
