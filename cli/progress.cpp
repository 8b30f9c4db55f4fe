#include "cli/progress.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fmt/format.h>

#include "models/train_run.hpp"

namespace ellipse::cli {

Progress::Progress(std::int64_t plain_every)
    : plain_every_(plain_every), terminal_(isatty(STDERR_FILENO) == 1) {}

Progress::~Progress() {
  if (bar_drawn_) std::fputc('\n', stderr);
}

void Progress::update(const TrainProgress& at, const std::string& detail) {
  const std::int64_t step = at.step, total = at.steps;
  const double eta = seconds_left(at);
  if (terminal_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * step / std::max<std::int64_t>(total, 1));
    fmt::print(stderr, "\r[{}{}] {}/{}  {}  ETA {}\x1b[K", std::string(static_cast<std::size_t>(filled), '#'),
               std::string(static_cast<std::size_t>(kWidth - filled), '.'), step, total, detail, format_duration(eta));
    std::fflush(stderr);
    bar_drawn_ = true;
  } else if (plain_every_ > 0 && (step % plain_every_ == 0 || step == total)) {
    fmt::print("step {}/{}  {}  elapsed {}  ETA {}\n", step, total, detail, format_duration(at.elapsed_s),
               format_duration(eta));
    std::fflush(stdout);
  }
}

void Progress::line(const std::string& text) {
  if (bar_drawn_) {
    std::fputs("\r\x1b[K", stderr);
    bar_drawn_ = false;
  }
  fmt::print("{}\n", text);
  std::fflush(stdout);
}

std::string train_step_detail(const TrainProgress& p, const char* items) {
  std::string detail = fmt::format("loss {:.4f}  lr {:.2e}  {:.0f} {}/s", p.loss, p.lr, p.items_per_s, items);
  const double here_s = p.elapsed_s - p.start_elapsed_s;  // this process's time, over which communication_s runs
  if (p.communication_s > 0 && here_s > 0) detail += fmt::format("  comm {:.0f}%", 100 * p.communication_s / here_s);
  return detail;
}

}  // namespace ellipse::cli
