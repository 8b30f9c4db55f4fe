#pragma once
// Training, evaluation and sampling for the character GPT (what `ellipse train|eval|sample gpt` run).
#include <functional>
#include <optional>
#include <string>

#include "gpt.hpp"
#include "train_run.hpp"

namespace ellipse {

struct GPTTrainOptions {
  std::string text_path;
  std::string config = "gpt-s";
  std::string attention = "standard";
  std::optional<nn::MetricMode> metric;  // default: causal
  std::int64_t steps = 2000;              // the schedule's length: the run ends after this many steps
  std::optional<std::int64_t> batch;      // default: the preset's
  double lr = 1e-3;                       // peak, after warm-up
  double final_lr = 1e-4;                 // where the cosine ends
  std::int64_t warmup = 100;
  double dropout = 0.0;                   // on attention and MLP outputs (saved in config.json)
  double beta1 = 0.9, beta2 = 0.99, weight_decay = 0.1, clip = 1.0;
  std::uint64_t seed = 0;
  std::int64_t eval_every = 200;
  std::string out_dir;                    // checkpoints and metrics.jsonl
  bool resume = false;                    // continue the run saved in out_dir
  std::int64_t stop_after = 0;            // > 0: save and stop after this step, as an interruption would
  bool detect_anomaly = false;            // name the first op that produces a NaN or Inf (slow; see grad_mode.hpp)
  Device device = Device::cpu();          // where the model trains; checkpoints are the same on every device
  // Data-parallel training over these ranks (null: this process alone; the CLI passes dist::world(device), and makes
  // `device` its rank_device: under NCCL, the rank's own GPU). `batch` stays the global batch, split evenly: each rank
  // computes its share of every step's windows.
  dist::Communicator* communicator = nullptr;
};

struct EvalRecord {
  std::int64_t step = 0;
  double train_loss = 0, val_loss = 0, lr = 0, tokens_per_s = 0, elapsed_s = 0;
};

// Trains (or resumes), writing out_dir/{model.safetensors, config.json, train_state.safetensors,
// metrics.jsonl} at every evaluation and at the end. Returns the last evaluation.
// A crash or SIGKILL at any moment leaves a checkpoint that --resume continues exactly (RunCheckpoints in
// train_run.hpp: the state is the commit point, metrics.jsonl is written before it and model.safetensors,
// which records its step, after it). A NaN or Inf loss, gradient norm or val loss stops the run before it
// writes anything; with detect_anomaly the error names the op that produced it. An unusable device is an
// error before anything is read or written. The model is initialised on the CPU, so a seed gives the same
// start on every device, and a run may be resumed on another device than the one it started on.
// With a communicator of several ranks, every rank calls train_gpt with the same options: they check that they
// agree (options, text, parameters), start from rank 0's parameters, split each step's windows and the
// evaluation, and only rank 0 writes the run's files and calls on_step and on_eval; the files are those of one
// process training on the global batch, up to the summation order.
EvalRecord train_gpt(const GPTTrainOptions& options, const std::function<void(const TrainProgress&)>& on_step,
                     const std::function<void(const EvalRecord&)>& on_eval);

// Mean cross-entropy over the non-overlapping windows of seq_len tokens of `ids` from its start (inputs
// [i, i+T), targets [i+1, i+T+1)); the last partial window is dropped. Runs on the model's device, as does
// sample_gpt.
double evaluate_gpt(GPT& model, const std::vector<std::int64_t>& ids, std::int64_t batch = 32);
// The same windows with the model reading one stream and predicting another of the same length: inputs
// context[i, i+T), targets targets[i+1, i+T+1). evaluate_gpt(model, ids) is evaluate_gpt(model, ids, ids);
// `ellipse study gpt` passes a corrupted text as the context and the clean text as the targets.
double evaluate_gpt(GPT& model, const std::vector<std::int64_t>& context, const std::vector<std::int64_t>& targets,
                    std::int64_t batch = 32);
// The same over several ranks: each evaluates every size-th batch of windows and the sums are reduced, so every
// rank returns the whole evaluation.
double evaluate_gpt(GPT& model, const std::vector<std::int64_t>& context, const std::vector<std::int64_t>& targets,
                    std::int64_t batch, dist::Communicator& comm);

struct SampleOptions {
  std::int64_t tokens = 200;
  double temperature = 1.0;  // 0: always the most likely token
  std::int64_t top_k = 0;    // 0: all tokens
  std::uint64_t seed = 0;
};
// Continues `prompt` by `tokens` characters with cached keys and values (when a layer cannot decode
// incrementally, each token recomputes the last seq_len tokens instead).
std::u32string sample_gpt(GPT& model, const CharTokenizer& tokenizer, std::u32string_view prompt,
                          const SampleOptions& options);

}  // namespace ellipse
