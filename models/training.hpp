#pragma once
// Guards shared by the trainers (`train gpt`, and any other model's): a run that meets a NaN or Inf stops with
// an error before it can write a checkpoint, so the last good checkpoint in its output folder is kept.
// Together with DetectAnomalyGuard (autograd/grad_mode.hpp), which a trainer holds for the whole run when
// asked to (--detect-anomaly) so that the error names the op that produced the first NaN or Inf.
#include <cstdint>
#include <string>
#include <string_view>

namespace ellipse {

// Throws an ellipse::Error when `value` (`what`: "the loss", "the gradient norm", ...) is NaN or Inf at `step`
// (1-based), saying which checkpoint in `out_dir` is kept (the one of `saved_step`, or none when it is 0) and,
// unless anomaly detection is on, to rerun with --detect-anomaly.
void check_finite(double value, std::string_view what, std::int64_t step, const std::string& out_dir,
                  std::int64_t saved_step);

}  // namespace ellipse
