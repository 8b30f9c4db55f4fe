#pragma once
// Grad mode is per thread: a NoGradGuard on one thread does not affect another.
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

}  // namespace ellipse
