#pragma once
// What the study tools' tests (test_study, test_study_gpt) share: a small patterned text for GPTs, checks of
// attention maps and of command lines that must fail, and reading JSON output. The program that includes
// this defines ELLIPSE_CLI (see cli_runner.hpp) and links nlohmann_json.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_runner.hpp"
#include "fashion_fixture.hpp"  // read_bytes

namespace ellipse::testing {

// "abc bad cab ..." over the letters a-f, space and newline (at least `length` characters).
inline std::string pattern_text(std::size_t length) {
  const std::string words[] = {"abc ", "bad ", "cab\n", "dace ", "face ", "bead\n"};
  std::string text;
  for (std::size_t i = 0; text.size() < length; ++i) text += words[(i * 7 + i / 3) % 6];
  return text;
}

// `maps` holds `rows` rows of `cols` probabilities: each row must sum to 1.
inline void check_rows_sum_to_one(const std::vector<double>& maps, std::int64_t rows, std::int64_t cols) {
  double worst = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    double total = 0;
    for (std::int64_t c = 0; c < cols; ++c) total += maps[static_cast<std::size_t>(r * cols + c)];
    worst = std::max(worst, std::abs(total - 1));
  }
  CHECK(worst < 1e-5);
}

// A command line that must fail with `status`, its error naming every one of `messages`.
struct Bad {
  std::vector<std::string> args;
  int status;
  std::vector<std::string> messages;
};

inline void check_bad(const std::vector<Bad>& bad) {
  for (const auto& b : bad) {
    std::string joined;
    for (const auto& a : b.args) joined += a + " ";
    CAPTURE(joined);
    const Run run = run_ellipse(b.args);
    INFO(run.err);
    CHECK(run.status == b.status);
    for (const auto& m : b.messages) CHECK_MESSAGE(run.err.find(m) != std::string::npos, m);
  }
}

inline nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_bytes(path)); }

}  // namespace ellipse::testing
