#pragma once
// Progress output for long commands: a redrawn bar on a terminal, plain periodic lines otherwise.
#include <cstdint>
#include <string>

#include "models/train_run.hpp"

namespace ellipse::cli {

// "loss 2.3100  lr 1.00e-03  12345 tok/s" for a training step (`items`: "tok" or "img"), and under several ranks
// the share of the time in their all-reduces so far: "  comm 7%".
std::string train_step_detail(const TrainProgress& p, const char* items);

class Progress {
 public:
  // `plain_every`: without a terminal, print a line every this many steps (and at the last step); 0: never.
  explicit Progress(std::int64_t plain_every = 100);
  ~Progress();
  // Training at `at`: its step out of total, and the time left (seconds_left); `detail` goes after the counters
  // ("loss 2.31  12.3k tok/s").
  void update(const TrainProgress& at, const std::string& detail);
  // Prints a full line (e.g. an evaluation) without garbling the bar.
  void line(const std::string& text);

 private:
  std::int64_t plain_every_;
  bool terminal_;
  bool bar_drawn_ = false;
};

}  // namespace ellipse::cli
