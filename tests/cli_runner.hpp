#pragma once
// Runs the ellipse binary from a test: the program that includes this header defines ELLIPSE_CLI as the
// binary's path (see tests/CMakeLists.txt).
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.hpp"

#ifndef ELLIPSE_CLI
#error "ELLIPSE_CLI must name the ellipse binary (see tests/CMakeLists.txt)"
#endif

namespace ellipse::testing {

// `arg` in single quotes for the shell.
inline std::string shell_quote(const std::string& arg) {
  std::string out = "'";
  for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct Run {
  int status = -1;  // the exit status; 128 + n when killed by signal n
  std::string out, err;
};

// Runs the ellipse binary with `args` (each quoted for the shell), stdin empty, capturing stdout and stderr.
inline Run run_ellipse(const std::vector<std::string>& args) {
  static TempDir scratch;
  static int calls = 0;
  const std::string out_path = scratch / (std::to_string(calls) + ".out"),
                    err_path = scratch / (std::to_string(calls) + ".err");
  ++calls;
  std::string command = shell_quote(ELLIPSE_CLI);
  for (const auto& a : args) command.append(" ").append(shell_quote(a));
  command.append(" </dev/null >").append(shell_quote(out_path)).append(" 2>").append(shell_quote(err_path));
  const int raw = std::system(command.c_str());
  Run run;
  if (raw != -1 && WIFEXITED(raw)) run.status = WEXITSTATUS(raw);
  else if (raw != -1 && WIFSIGNALED(raw)) run.status = 128 + WTERMSIG(raw);
  auto slurp = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
  };
  run.out = slurp(out_path);
  run.err = slurp(err_path);
  return run;
}

}  // namespace ellipse::testing
