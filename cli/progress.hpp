#pragma once
// Progress output for long commands: a redrawn bar on a terminal, plain periodic lines otherwise.
#include <cstdint>
#include <string>

namespace ellipse::cli {

class Progress {
 public:
  // `plain_every`: without a terminal, print a line every this many steps (and at the last step); 0: never.
  explicit Progress(std::int64_t total, std::int64_t plain_every = 100);
  ~Progress();
  // `step` done out of total; `detail` goes after the counters ("loss 2.31  12.3k tok/s").
  void update(std::int64_t step, double elapsed_s, const std::string& detail);
  // Prints a full line (e.g. an evaluation) without garbling the bar.
  void line(const std::string& text);

 private:
  std::int64_t total_, plain_every_;
  bool terminal_;
  bool bar_drawn_ = false;
};

}  // namespace ellipse::cli
