#pragma once
// What the trainers (train_gpt, train_vit) share: the files of a run directory, checkpoints that survive a
// crash or SIGKILL at any moment, metrics.jsonl, the stop on a NaN or Inf, the progress they report, and a
// running mean that survives a checkpoint bit for bit.
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "../dist/communicator.hpp"
#include "checkpoint.hpp"

namespace ellipse {

// Reported after every training step.
struct TrainProgress {
  std::int64_t step = 0, steps = 0;  // step is 1-based: the number of steps done
  std::int64_t start_step = 0;       // steps already done when this process began (a resumed run); items_per_s
                                     // and communication_s cover only the steps after it
  double loss = 0, lr = 0;
  double items_per_s = 0;            // tokens (GPT) or images (ViT) per second
  double elapsed_s = 0;              // the run's training time to the end of this step, earlier processes' included
  double start_elapsed_s = 0;        // of elapsed_s, the earlier processes' (RunCheckpoints::resumed_elapsed_s)
  // Of this process's time (elapsed_s - start_elapsed_s), the time in the loss and gradient all-reduces across
  // ranks, waiting for the slowest rank included
  // (0 on one process). It is host time in the calls: on a GPU, MPI's also waits for the kernels before it, while
  // NCCL's only queues its work.
  double communication_s = 0;
};

// The seconds left until step `steps`, at the pace of the steps this process has done (a resumed run counts
// from its start_step); NaN before the first of them.
double seconds_left(const TrainProgress& at);

// A training time for people: "1h02m", "3m10s", "42s"; "?" for a negative or non-finite one.
std::string format_duration(double seconds);

// A run directory: config.json, model.safetensors, train_state.safetensors and metrics.jsonl.
struct RunFiles {
  explicit RunFiles(const std::string& dir)
      : dir(dir), config(dir + "/config.json"), model(dir + "/model.safetensors"),
        state(dir + "/train_state.safetensors"), metrics(dir + "/metrics.jsonl") {}
  std::string dir, config, model, state, metrics;
};

// Starts a fresh run: creates the directory, refuses one that already holds a run (a model.safetensors or
// train_state.safetensors; the error names `command` and --resume), removes the temporary files a killed run
// left (remove_stale_temp_files), and writes config.json.
void start_run(const RunFiles& files, std::string_view config_json, std::string_view command);

// Checkpoints. Each file is replaced atomically, and train_state.safetensors is the commit point: it holds
// everything a resume needs (parameters, optimizer buffers, generators, the step). model.safetensors is written
// after it and records its step in its metadata, so a crash between the two leaves the model one checkpoint
// behind or missing, which resume_checkpoint completes from the state. (A trainer writes metrics.jsonl just
// before the state: a crash there leaves metrics one line ahead, and a resume drops the lines past the state's
// step; see RunCheckpoints.)
void save_checkpoint(const RunFiles& files, const nn::Module& model, const nn::Optimizer& optimizer,
                     const TrainState& state);
// Loads the checkpoint into `model` and `optimizer` and returns the state. model.safetensors is validated
// first, so a damaged one is an error rather than something to resume past; one that is missing or behind the
// state is rewritten from it, one ahead of it (which no crash can leave) is refused as inconsistent. Also
// removes stale temporary files.
TrainState resume_checkpoint(const RunFiles& files, nn::Module& model, nn::Optimizer& optimizer);
// The step of the committed checkpoint (train_state.safetensors), read without a model.
std::int64_t checkpoint_step(const RunFiles& files);
// Removes the temporary files that a killed run's atomic writes left beside the run's files
// (io::write_file_atomic names them NAME.tmp.PID.N); those of a live process are left alone.
void remove_stale_temp_files(const RunFiles& files);

// Throws an ellipse::Error when `value` (`what`: "train gpt: the loss", "... the gradient norm", ...) is NaN or
// Inf at `step` (1-based), saying which checkpoint in `out_dir` is kept (the one of `saved_step`, or none when
// it is 0) and, unless anomaly detection is on, to rerun with --detect-anomaly. Trainers call it before they
// write anything, so the last good checkpoint is kept; with DetectAnomalyGuard held for the whole run
// (--detect-anomaly) the error names the op that produced the first NaN or Inf instead.
void check_finite(double value, std::string_view what, std::int64_t step, const std::string& out_dir,
                  std::int64_t saved_step);

// The metrics lines of steps up to `step`: a run resumed from an older checkpoint rewrites the rest.
std::string metrics_up_to(const std::string& path, std::int64_t step);
// The last of `lines` (metrics.jsonl's text), without its newline; empty when there is none.
std::string_view last_line(std::string_view lines);

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

// One run's checkpoints and metrics as a trainer drives them: start() or resume(), then save() at every
// evaluation (with its metrics line) and when stopped between evaluations (without). The flags' fingerprint is
// stored in every state and must match on resume; `command` ("train gpt") prefixes the errors.
class RunCheckpoints {
 public:
  RunCheckpoints(const std::string& dir, std::string command, std::string fingerprint);
  const RunFiles& files() const { return files_; }
  std::int64_t saved_step() const { return saved_step_; }  // 0 before the first checkpoint
  // After resume: the training time before it, the "elapsed_s" of the last metrics line up to the checkpoint (0
  // without one). That line is written before its evaluation, so the resumed run leaves out the evaluation's and
  // the checkpoint's time, and a checkpoint taken between evaluations the time since the line.
  double resumed_elapsed_s() const { return resumed_elapsed_s_; }

  void start(std::string_view config_json) { start_run(files_, config_json, command_); }
  // resume_checkpoint, the flags check, and metrics.jsonl's lines up to the state's step.
  TrainState resume(nn::Module& model, nn::Optimizer& optimizer);
  // Appends `metrics_line` (unless empty: one JSON object whose "step" is state.step, with or without its
  // newline) to metrics.jsonl and writes it, then save_checkpoint at state.step.
  void save(const nn::Module& model, const nn::Optimizer& optimizer, TrainState state,
            std::string_view metrics_line = {});
  // check_finite for this run: `what` is prefixed with the command.
  void check_finite(double value, std::string_view what, std::int64_t step) const;

 private:
  RunFiles files_;
  std::string command_, fingerprint_, metrics_;
  std::int64_t saved_step_ = 0;
  double resumed_elapsed_s_ = 0;
};

// The training loop of both trainers, for research code's own models and data too. Per step (0-based `step`, from
// `start` to `end`): the learning rate of learning_rate(step), zero_grad, loss(step) (the forward pass of the
// step's batch), a stop on a NaN or Inf loss, backward, clipping of the global gradient norm to `clip` (a NaN or
// Inf norm stops too), the optimizer's step and on_step. After a step where evaluate_after(step + 1) holds, or
// after the schedule's last step, evaluate(progress, mean train loss since the last evaluation) runs and returns
// its metrics.jsonl line, which is checkpointed with the run; a run stopped at `end` between evaluations is
// checkpointed without a line. Every checkpoint holds state(step + 1) (a model's generators, say) plus the step
// and the running train loss (under "loss"), and a resumed run passes that loss back as `train_loss`. A resumed
// run's elapsed_s goes on from resumed_elapsed_s: put the progress's elapsed_s in the metrics lines to keep it.
struct TrainLoop {
  std::int64_t start = 0;           // the first step to run: 0, or the resumed checkpoint's step
  std::int64_t end = 0;             // stop after this many steps (the schedule's length, or earlier)
  std::int64_t steps = 0;           // the schedule's length
  double clip = 1.0;                // the largest global gradient norm
  std::int64_t items_per_step = 0;  // tokens or images, for the throughput in TrainProgress
  std::function<double(std::int64_t step)> learning_rate;
  std::function<Tensor(std::int64_t step)> loss;  // a scalar, with its graph
  std::function<bool(std::int64_t done)> evaluate_after;
  // `progress` is the step's, its elapsed_s the training time up to the end of the step.
  std::function<std::string(const TrainProgress& progress, double train_loss)> evaluate;
  std::function<TrainState(std::int64_t done)> state;  // what to checkpoint besides the step and the loss
  std::function<void(const TrainProgress&)> on_step;   // optional
  // Data-parallel training over these ranks (null: this process alone). Each rank's loss(step) is the mean over
  // its equal share of the step's global batch; the loop averages the losses and the gradients over the ranks
  // (before the NaN check and the clipping, so every rank decides alike and takes the same step), only rank 0
  // writes checkpoints and gets on_step, and `evaluate` runs on every rank (it may split its work and reduce).
  dist::Communicator* communicator = nullptr;
};
// RunCheckpoints::resume on every rank: rank 0 first (it may repair the run's files), then the others, which
// only read them.
TrainState resume_run(RunCheckpoints& run, nn::Module& model, nn::Optimizer& optimizer, dist::Communicator& comm);
// `value` averaged over the ranks (itself for a single process): a loss or metric every rank then agrees on.
double mean_over_ranks(dist::Communicator& comm, double value);
// Runs `loop` on `model` with `optimizer`, checkpointing through `run`. Errors name the option that is wrong
// (end past steps, a missing function) and, for a NaN or Inf, the run's command and step (check_finite).
void run_train_loop(const TrainLoop& loop, nn::Module& model, nn::Optimizer& optimizer, RunCheckpoints& run,
                    RunningMean train_loss = {});

}  // namespace ellipse
