#include "models/training.hpp"

#include <cmath>

#include "autograd/grad_mode.hpp"
#include "core/error.hpp"

namespace ellipse {

void check_finite(double value, std::string_view what, std::int64_t step, const std::string& out_dir,
                  std::int64_t saved_step) {
  if (std::isfinite(value)) return;
  const std::string kept = saved_step > 0 ? fmt::format("The last good checkpoint (step {}) in {} is kept", saved_step,
                                                        out_dir)
                                          : fmt::format("No checkpoint was written to {}", out_dir);
  // With anomaly detection on, an op that made the NaN or Inf would have thrown first.
  const std::string hint = anomaly_detection_enabled()
                               ? "no op produced it from finite inputs, so it was already in the parameters or the data"
                               : "rerun with --detect-anomaly to find the op that produced it";
  fail("{} became {} at step {}; stopping. {}; {}", what, value, step, kept, hint);
}

}  // namespace ellipse
