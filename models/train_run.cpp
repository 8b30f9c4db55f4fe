#include "models/train_run.hpp"

#include <signal.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/grad_mode.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/io/safetensors.hpp"
#include "dist/data_parallel.hpp"

namespace ellipse {

double seconds_left(const TrainProgress& at) {
  const std::int64_t done_here = at.step - at.start_step;
  if (done_here <= 0) return NAN;
  return (at.elapsed_s - at.start_elapsed_s) / static_cast<double>(done_here) * static_cast<double>(at.steps - at.step);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<long long>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

void start_run(const RunFiles& files, std::string_view config_json, std::string_view command) {
  std::filesystem::create_directories(files.dir);
  ELLIPSE_CHECK(!std::filesystem::exists(files.state) && !std::filesystem::exists(files.model), "{}: {} already holds "
                "a run; resume it (the resume option) or choose another output directory", command, files.dir);
  remove_stale_temp_files(files);
  io::write_file_atomic(files.config, config_json);
}

void save_checkpoint(const RunFiles& files, const nn::Module& model, const nn::Optimizer& optimizer,
                     const TrainState& state) {
  save_train_state(files.state, model, optimizer, state);  // the commit point
  save_parameters(files.model, model, {{"step", std::to_string(state.step)}});
}

TrainState resume_checkpoint(const RunFiles& files, nn::Module& model, nn::Optimizer& optimizer) {
  // model.safetensors first (load_train_state then overwrites the parameters): a damaged one is an error.
  const bool model_missing = !std::filesystem::exists(files.model);
  const std::string model_step = model_missing ? "" : load_parameters(files.model, model)["step"];
  TrainState state = load_train_state(files.state, model, optimizer);
  // A checkpoint whose writing was interrupted after the state was replaced: model.safetensors is then missing
  // (the first save) or one save behind. (A model file without a step predates this check.)
  if (model_missing || (!model_step.empty() && model_step != std::to_string(state.step))) {
    std::int64_t behind = 0;
    const auto [end, error] = std::from_chars(model_step.data(), model_step.data() + model_step.size(), behind);
    ELLIPSE_CHECK(model_missing ||
                      (error == std::errc() && end == model_step.data() + model_step.size() && behind < state.step),
                  "{}: model.safetensors is at step {} but train_state.safetensors at step {}; the checkpoint is "
                  "inconsistent", files.dir, model_step, state.step);
    save_parameters(files.model, model, {{"step", std::to_string(state.step)}});
  }
  remove_stale_temp_files(files);
  return state;
}

std::int64_t checkpoint_step(const RunFiles& files) {
  const auto metadata = io::load_safetensors(files.state).metadata;
  const auto found = metadata.find("step");
  std::int64_t step = -1;
  if (found != metadata.end()) {
    const std::string& text = found->second;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), step);
    if (error != std::errc() || end != text.data() + text.size()) step = -1;
  }
  ELLIPSE_CHECK(step >= 0, "{}: metadata field 'step' is missing or not a step count", files.state);
  return step;
}

void remove_stale_temp_files(const RunFiles& files) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(files.dir, error)) {
    const std::string file = entry.path().filename().string();
    for (const std::string& path : {files.config, files.model, files.state, files.metrics}) {
      const std::string prefix = std::filesystem::path(path).filename().string() + ".tmp.";
      if (!file.starts_with(prefix)) continue;
      const long pid = std::strtol(file.c_str() + prefix.size(), nullptr, 10);
      if (pid > 0 && pid != static_cast<long>(::getpid()) && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
        std::filesystem::remove(entry.path(), error);
    }
  }
}

void check_finite(double value, std::string_view what, std::int64_t step, const std::string& out_dir,
                  std::int64_t saved_step) {
  if (std::isfinite(value)) return;
  const std::string kept = saved_step > 0 ? fmt::format("The last good checkpoint (step {}) in {} is kept", saved_step,
                                                        out_dir)
                                          : fmt::format("No checkpoint was written to {}", out_dir);
  // With anomaly detection on, an op that made the NaN or Inf would have thrown first.
  const std::string hint = anomaly_detection_enabled()
                               ? "no op produced it from finite inputs, so it was already in the parameters or the data"
                               : "rerun with anomaly detection on (the detect_anomaly option) to find the op that "
                                 "produced it";
  fail("{} became {} at step {}; stopping. {}; {}", what, value, step, kept, hint);
}

std::string metrics_up_to(const std::string& path, std::int64_t step) {
  if (!std::filesystem::exists(path)) return "";
  std::istringstream in(io::read_file(path, std::uint64_t{1} << 30));
  std::string kept, line;
  while (std::getline(in, line)) {
    const auto json = nlohmann::json::parse(line, nullptr, false);
    if (json.is_object() && json.contains("step") && json["step"].is_number_integer() &&
        json["step"].get<std::int64_t>() <= step)
      kept += line + "\n";
  }
  return kept;
}

std::string_view last_line(std::string_view lines) {
  if (lines.ends_with('\n')) lines.remove_suffix(1);
  const std::size_t newline = lines.rfind('\n');
  return newline == std::string_view::npos ? lines : lines.substr(newline + 1);
}

std::uint64_t state_number(const TrainState& state, const std::string& key, const std::string& path) {
  const auto found = state.fields.find(key);
  ELLIPSE_CHECK(found != state.fields.end(), "{}: field '{}' is missing", path, key);
  const std::string& text = found->second;
  std::uint64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  ELLIPSE_CHECK(!text.empty() && error == std::errc() && end == text.data() + text.size(),
                "{}: field '{}' is '{}', not an unsigned integer", path, key, text);
  return value;
}

double RunningMean::take() {
  const double mean = count_ > 0 ? sum_ / static_cast<double>(count_) : 0.0;
  sum_ = 0;
  count_ = 0;
  return mean;
}

void RunningMean::save(TrainState& state, const std::string& key) const {
  state.fields[key + "_sum_bits"] = std::to_string(std::bit_cast<std::uint64_t>(sum_));
  state.fields[key + "_count"] = std::to_string(count_);
}

void RunningMean::load(const TrainState& state, const std::string& key, const std::string& path) {
  sum_ = std::bit_cast<double>(state_number(state, key + "_sum_bits", path));
  count_ = static_cast<std::int64_t>(state_number(state, key + "_count", path));
}

RunCheckpoints::RunCheckpoints(const std::string& dir, std::string command, std::string fingerprint)
    : files_(dir), command_(std::move(command)), fingerprint_(std::move(fingerprint)) {}

TrainState RunCheckpoints::resume(nn::Module& model, nn::Optimizer& optimizer) {
  TrainState state = resume_checkpoint(files_, model, optimizer);
  ELLIPSE_CHECK(state.fields["flags"] == fingerprint_, "{}: resuming {}: the run was started with options '{}', "
                "now '{}'; resume with the same options", command_, files_.dir, state.fields["flags"], fingerprint_);
  saved_step_ = state.step;
  metrics_ = metrics_up_to(files_.metrics, state.step);
  const auto line = nlohmann::json::parse(last_line(metrics_), nullptr, false);  // discarded when not JSON
  const bool timed = line.is_object() && line.contains("elapsed_s") && line["elapsed_s"].is_number();
  resumed_elapsed_s_ = timed ? line["elapsed_s"].get<double>() : 0;
  return state;
}

void RunCheckpoints::save(const nn::Module& model, const nn::Optimizer& optimizer, TrainState state,
                          std::string_view metrics_line) {
  // Metrics before the checkpoint: after a crash between the two, metrics.jsonl is one line ahead of the state,
  // and resume() drops the lines past the state's step before the run redoes them. It finds a line's step in the
  // line, so each must be one JSON object that carries the checkpoint's step.
  if (!metrics_line.empty()) {
    if (metrics_line.ends_with('\n')) metrics_line.remove_suffix(1);
    const auto json = nlohmann::json::parse(metrics_line, nullptr, false);
    ELLIPSE_CHECK(metrics_line.find('\n') == std::string_view::npos && json.is_object() && json.contains("step") &&
                      json["step"].is_number_integer() && json["step"].get<std::int64_t>() == state.step,
                  "{}: a metrics line must be one line of JSON, an object whose \"step\" is the checkpoint's ({}); "
                  "got '{}'", command_, state.step, metrics_line);
    metrics_ += std::string(metrics_line) + "\n";
    io::write_file_atomic(files_.metrics, metrics_);
  }
  state.fields["flags"] = fingerprint_;
  save_checkpoint(files_, model, optimizer, state);
  saved_step_ = state.step;
}

void RunCheckpoints::check_finite(double value, std::string_view what, std::int64_t step) const {
  ellipse::check_finite(value, fmt::format("{}: {}", command_, what), step, files_.dir, saved_step_);
}

TrainState resume_run(RunCheckpoints& run, nn::Module& model, nn::Optimizer& optimizer, dist::Communicator& comm) {
  TrainState state;
  if (comm.rank() == 0) state = run.resume(model, optimizer);
  comm.barrier();
  if (comm.rank() != 0) state = run.resume(model, optimizer);
  return state;
}

double mean_over_ranks(dist::Communicator& comm, double value) {
  if (comm.size() == 1) return value;
  Tensor t = from_vector(std::vector<double>{value}, {1});
  comm.all_reduce(t, dist::Reduction::average);
  return t.item();
}

void run_train_loop(const TrainLoop& loop, nn::Module& model, nn::Optimizer& optimizer, RunCheckpoints& run,
                    RunningMean train_loss) {
  ELLIPSE_CHECK(loop.learning_rate && loop.loss && loop.evaluate_after && loop.evaluate && loop.state,
                "run_train_loop: learning_rate, loss, evaluate_after, evaluate and state must all be set");
  ELLIPSE_CHECK(0 <= loop.start && loop.start <= loop.end && loop.end <= loop.steps && loop.clip > 0 &&
                    loop.items_per_step >= 0,
                "run_train_loop: expected 0 <= start ({}) <= end ({}) <= steps ({}), clip ({}) positive and "
                "items_per_step ({}) not negative", loop.start, loop.end, loop.steps, loop.clip, loop.items_per_step);
  const auto save = [&](std::int64_t done, std::string_view metrics) {
    TrainState state = loop.state(done);
    state.step = done;
    train_loss.save(state, "loss");
    run.save(model, optimizer, std::move(state), metrics);
  };
  const auto t0 = std::chrono::steady_clock::now();
  const double before = run.resumed_elapsed_s();
  const auto params = model.parameters();
  dist::Communicator& comm = loop.communicator ? *loop.communicator : dist::single_process();
  const bool writer = comm.rank() == 0;
  std::int64_t items = 0;
  double communication_s = 0;
  // Runs a collective, adding its time to communication_s.
  const auto timed = [&](const auto& collective) {
    const auto start = std::chrono::steady_clock::now();
    collective();
    communication_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (std::int64_t step = loop.start; step < loop.end; ++step) {
    const double lr = loop.learning_rate(step);
    optimizer.set_lr(lr);
    optimizer.zero_grad();
    const Tensor loss = loop.loss(step);
    double loss_value = loss.item();  // waits for the step's forward pass, which is not communication
    if (comm.size() > 1) timed([&] { loss_value = mean_over_ranks(comm, loss_value); });
    run.check_finite(loss_value, "the loss", step + 1);
    loss.backward();
    if (comm.size() > 1) timed([&] { dist::average_gradients(params, comm); });
    run.check_finite(nn::clip_grad_norm(params, loop.clip), "the gradient norm", step + 1);
    optimizer.step();
    train_loss.add(loss_value);
    items += loop.items_per_step;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const TrainProgress progress{.step = step + 1,
                                 .steps = loop.steps,
                                 .start_step = loop.start,
                                 .loss = loss_value,
                                 .lr = lr,
                                 .items_per_s = static_cast<double>(items) / seconds,
                                 .elapsed_s = before + seconds,
                                 .start_elapsed_s = before,
                                 .communication_s = communication_s};
    if (loop.on_step && writer) loop.on_step(progress);
    if (loop.evaluate_after(step + 1) || step + 1 == loop.steps) {
      const std::string metrics = loop.evaluate(progress, train_loss.take());
      if (writer) save(step + 1, metrics);
    } else if (step + 1 == loop.end && writer) {
      save(step + 1, "");  // stopped between evaluations: a checkpoint only, as the uninterrupted run has no line here
    }
  }
}

}  // namespace ellipse
