#pragma once
// Model checkpoints: parameters as safetensors under their dotted names (what PyTorch's load_state_dict
// expects), and the training state needed to resume exactly. All writes are atomic.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "../core/random.hpp"
#include "../nn/module.hpp"
#include "../nn/optim.hpp"

namespace ellipse {

// Writes every parameter of `module` as F32 to `path`, with optional string metadata (a trainer's step).
void save_parameters(const std::string& path, const nn::Module& module,
                     const std::map<std::string, std::string>& metadata = {});
// A model's folder as the loaders read it: DIR/model.safetensors (save_parameters) and DIR/config.json, each
// written atomically, DIR created. A DIR that holds a training run's state (train_state.safetensors) is refused:
// its parameters would no longer match that state. `op` starts the error messages.
void save_model_dir(const std::string& dir, const nn::Module& module, std::string_view config_json,
                    std::string_view op);
// Loads `path` into `module`: every parameter must be present with its exact shape, and nothing else.
// On any mismatch the module is left unchanged and the error names the file and the tensor. Returns the
// file's metadata.
std::map<std::string, std::string> load_parameters(const std::string& path, nn::Module& module);

// Everything a run needs to continue bit for bit: parameters, the optimizer's buffers (AdamW's moments, SGD's
// momentum) and step count, the step, and the state of each named generator, plus free-form string fields (the
// run's flags).
struct TrainState {
  std::int64_t step = 0;
  std::map<std::string, std::vector<std::uint64_t>> generators;
  std::map<std::string, std::string> fields;
};
// The file holds "param.P" and, for each of the optimizer's buffer_names() b, "b.P" per parameter P, and records
// the optimizer's name().
void save_train_state(const std::string& path, const nn::Module& module, const nn::Optimizer& optimizer,
                      const TrainState& state);
// Restores module and optimizer from `path` and returns the rest. Validates the optimizer's kind, names, shapes
// and fields first.
TrainState load_train_state(const std::string& path, nn::Module& module, nn::Optimizer& optimizer);

}  // namespace ellipse
