#pragma once
// What the trainers (train_gpt, train_vit) share: the files of a run directory, metrics.jsonl, the
// progress they report, and a running mean that survives a checkpoint bit for bit.
#include <cstdint>
#include <string>
#include <string_view>

#include "models/checkpoint.hpp"

namespace ellipse {

// Reported after every training step.
struct TrainProgress {
  std::int64_t step = 0, steps = 0;  // step is 1-based: the number of steps done
  double loss = 0, lr = 0;
  double items_per_s = 0;            // tokens (GPT) or images (ViT) per second
  double elapsed_s = 0;
};

// A run directory: config.json, model.safetensors, train_state.safetensors and metrics.jsonl.
struct RunFiles {
  explicit RunFiles(const std::string& dir)
      : dir(dir), config(dir + "/config.json"), model(dir + "/model.safetensors"),
        state(dir + "/train_state.safetensors"), metrics(dir + "/metrics.jsonl") {}
  std::string dir, config, model, state, metrics;
};

// Starts a fresh run: creates the directory, refuses one that already holds a run (naming `command` and
// --resume), and writes config.json.
void start_run(const RunFiles& files, std::string_view config_json, std::string_view command);

// The metrics lines of steps up to `step`: a run resumed from an older checkpoint rewrites the rest.
std::string metrics_up_to(const std::string& path, std::int64_t step);

// An unsigned integer field of a training state; errors name `path` and the key.
std::uint64_t state_number(const TrainState& state, const std::string& key, const std::string& path);

// The mean of the train losses since the last evaluation. Checkpointed as the exact bits of its sum,
// so that a resumed run writes the same metrics line as an uninterrupted one.
class RunningMean {
 public:
  void add(double value) {
    sum_ += value;
    ++count_;
  }
  double take();  // the mean so far (0 when empty); starts again
  void save(TrainState& state, const std::string& key) const;
  void load(const TrainState& state, const std::string& key, const std::string& path);

 private:
  double sum_ = 0;
  std::int64_t count_ = 0;
};

}  // namespace ellipse
