#pragma once
// Grad mode and anomaly detection are per thread: a guard on one thread does not affect another.
namespace ellipse {

bool grad_enabled();
void set_grad_enabled(bool enabled);

// Within its scope, ops record no graph (evaluation, optimizer steps, backward itself).
class NoGradGuard {
 public:
  NoGradGuard() : previous_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Anomaly detection (`--detect-anomaly`), off by default. While on, every op that goes through record() checks
// its output, and backward checks every gradient a rule returns, for NaN and Inf; the first op to produce one
// from inputs without one throws an ellipse::Error naming the op, forward or backward, and the shapes. (An
// input that already holds an Inf, such as attention's -inf mask, excuses Infs in the output but not NaNs.)
// Each check reads the whole tensor, so it is a debugging aid, not a training default.
bool anomaly_detection_enabled();
void set_anomaly_detection(bool enabled);

class DetectAnomalyGuard {
 public:
  explicit DetectAnomalyGuard(bool enabled = true) : previous_(anomaly_detection_enabled()) {
    set_anomaly_detection(enabled);
  }
  ~DetectAnomalyGuard() { set_anomaly_detection(previous_); }
  DetectAnomalyGuard(const DetectAnomalyGuard&) = delete;
  DetectAnomalyGuard& operator=(const DetectAnomalyGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace ellipse
