// Reliability: anomaly detection, non-finite losses, impossible allocations, bit-identical and
// thread-independent training, checkpoints that survive SIGKILL and failed runs (the GPT's, and the ViT's
// through the same shared code in models/train_run), and the command-line program's clean failure on corrupt
// checkpoints, configs and flags.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/io/file.hpp"
#include "core/io/safetensors.hpp"
#include "fashion_fixture.hpp"
#include "helpers.hpp"
#include "models/checkpoint.hpp"
#include "models/gpt.hpp"
#include "models/gpt_train.hpp"
#include "models/train_run.hpp"
#include "models/vit_train.hpp"

#ifndef ELLIPSE_CLI
#error "ELLIPSE_CLI must name the ellipse binary (see tests/CMakeLists.txt)"
#endif

using namespace ellipse;
namespace fs = std::filesystem;
using ellipse::testing::TempDir;

namespace {

std::string read_bytes(const std::string& path) { return io::read_file(path, std::uint64_t{1} << 30); }

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string pattern_text(std::size_t length) {
  const std::string words[] = {"abc ", "bad ", "cab\n", "dace ", "face ", "bead\n"};
  std::string text;
  for (std::size_t i = 0; text.size() < length; ++i) text += words[(i * 7 + i / 3) % 6];
  return text.substr(0, length);
}

// Starts the ellipse program with `args`, its output discarded; returns its pid.
pid_t spawn_ellipse(const std::vector<std::string>& args) {
  std::vector<std::string> all{ELLIPSE_CLI};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int error = posix_spawn(&pid, ELLIPSE_CLI, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(error == 0);
  return pid;
}

// The exit status, or 128 + the signal.
int wait_for(pid_t pid) {
  int raw = 0;
  while (::waitpid(pid, &raw, 0) < 0) REQUIRE(errno == EINTR);
  return WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
}

struct Run {
  int status = -1;
  std::string err;
};

// Runs the ellipse program to completion, keeping stderr.
Run run_ellipse(const std::vector<std::string>& args, const TempDir& scratch) {
  static int calls = 0;
  const std::string err_path = scratch / ("err" + std::to_string(calls++));
  std::string command = ELLIPSE_CLI;
  for (const auto& a : args) command += " '" + a + "'";
  command += " </dev/null >/dev/null 2>'" + err_path + "'";
  const int raw = std::system(command.c_str());
  Run run;
  run.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  run.err = read_bytes(err_path);
  return run;
}

// The metrics of a run without its timings, which differ between runs.
std::vector<std::string> losses(const std::string& metrics_path) {
  std::vector<std::string> lines;
  std::istringstream in(read_bytes(metrics_path));
  for (std::string line; std::getline(in, line);) {
    auto json = nlohmann::json::parse(line);
    json.erase("tokens_per_s");
    json.erase("images_per_s");
    json.erase("elapsed_s");
    lines.push_back(json.dump());
  }
  return lines;
}

GPTTrainOptions tiny_run(const std::string& text, const std::string& out) {
  GPTTrainOptions o;
  o.text_path = text;
  o.config = "gpt-tiny";
  o.attention = "elliptical";
  o.steps = 6;
  o.eval_every = 3;
  o.batch = 2;
  o.seed = 7;
  o.out_dir = out;
  return o;
}

// Sets the first element of one parameter in the run's saved state, as a diverged update would.
void poison_state(const std::string& run_dir, const std::string& parameter, float value) {
  const std::string path = run_dir + "/train_state.safetensors";
  auto file = io::load_safetensors(path);
  bool found = false;
  for (auto& [name, tensor] : file.tensors) {
    if (name != "param." + parameter) continue;
    tensor.data<float>()[0] = value;
    found = true;
  }
  REQUIRE_MESSAGE(found, parameter);
  io::save_safetensors(path, file.tensors, file.metadata);
}

ViTTrainOptions tiny_vit_run(const std::string& data, const std::string& out) {
  ViTTrainOptions o;
  o.data_dir = data;
  o.config = "vit-xs";
  o.epochs = 2;
  o.batch = 16;
  o.limit_train = 64;  // 4 steps per epoch, 8 in all
  o.limit_test = 32;
  o.seed = 3;
  o.out_dir = out;
  return o;
}

std::map<std::string, std::string> checkpoint_bytes(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::directory_iterator(dir)) files[entry.path().filename()] = read_bytes(entry.path());
  return files;
}

}  // namespace

// ---- numerical faults ----

TEST_CASE("detect-anomaly names the op, forward or backward, and the shapes") {
  const Tensor x = from_vector<float>({1, -1, 2}, {3}).requires_grad_();
  CHECK_NOTHROW(log(x));  // off by default: NaN is just a value
  {
    DetectAnomalyGuard anomaly;
    CHECK_ERROR(log(x), "detect-anomaly", "forward of 'log'", "NaN", "[3]");
    // Evaluation without a graph is checked too.
    NoGradGuard no_grad;
    CHECK_ERROR(div(x, 0.0), "forward of 'mul'", "Inf");
  }
  const Tensor zero = zeros({2, 2}).requires_grad_();
  {
    DetectAnomalyGuard anomaly;
    const Tensor y = sum(sqrt(zero));  // forward is finite (0); the derivative 1 / (2 sqrt(0)) is not
    CHECK_ERROR(y.backward(), "backward of 'sqrt'", "Inf", "gradient of input 0", "[2, 2]");
  }
  CHECK_NOTHROW(sum(sqrt(zero)).backward());
  // An Inf that is meant (attention's -inf mask) is no anomaly; a whole GPT step passes.
  GPTConfig config = gpt_preset("gpt-tiny", 5);
  config.attention = "elliptical";
  GPT model(config, 1);
  DetectAnomalyGuard anomaly;
  const Tensor ids = from_vector<std::int64_t>({0, 1, 2, 3, 4, 0, 1, 2}, {2, 4});
  const Tensor loss = cross_entropy(model.forward(ids), ids);
  CHECK_NOTHROW(loss.backward());
  // The switch is per thread.
  bool other_thread = true;
  std::thread([&] { other_thread = anomaly_detection_enabled(); }).join();
  CHECK_FALSE(other_thread);
}

TEST_CASE("check_finite stops a run naming the value, the step and the checkpoint kept") {
  CHECK_NOTHROW(check_finite(1.5, "the loss", 3, "runs/x", 2));
  CHECK_ERROR(check_finite(NAN, "the loss", 3, "runs/x", 2), "the loss became nan at step 3", "(step 2) in runs/x",
              "the detect_anomaly option");
  CHECK_ERROR(check_finite(INFINITY, "the gradient norm", 1, "runs/x", 0), "inf at step 1",
              "No checkpoint was written to runs/x");
}

TEST_CASE("a NaN loss stops training, keeps the checkpoint byte for byte, and --detect-anomaly names the op") {
  TempDir dir;
  const std::string text = dir / "text.txt";
  write_bytes(text, pattern_text(1500));
  const std::string out = dir / "run";
  GPTTrainOptions o = tiny_run(text, out);
  o.stop_after = 3;
  train_gpt(o, nullptr, nullptr);
  // Poison one embedding row in the saved state, as a diverged update would: the next step's loss is NaN.
  auto poison = [&](const std::string& parameter, float value) { poison_state(out, parameter, value); };
  poison("tok_emb.weight", NAN);
  const auto before = checkpoint_bytes(out);
  o.resume = true;
  o.stop_after = 0;
  CHECK_ERROR(train_gpt(o, nullptr, nullptr), "the loss became nan at step 4", "(step 3)", out, "the detect_anomaly option");
  CHECK(checkpoint_bytes(out) == before);
  // No op made that NaN: it was in a parameter already, and anomaly detection says so.
  o.detect_anomaly = true;
  CHECK_ERROR(train_gpt(o, nullptr, nullptr), "the loss became nan", "no op produced");
  CHECK(checkpoint_bytes(out) == before);
  // An Inf in a LayerNorm weight is passed on as Infs until some op adds +Inf to -Inf: that op is named.
  poison("tok_emb.weight", 0.5f);
  poison("blocks.0.ln1.weight", INFINITY);
  const auto poisoned = checkpoint_bytes(out);
  CHECK_ERROR(train_gpt(o, nullptr, nullptr), "detect-anomaly: the forward of '", "produced NaN");
  CHECK(checkpoint_bytes(out) == poisoned);
  // The command-line program: exit status 1, the message on stderr, the files unchanged.
  const Run run = run_ellipse({"train", "gpt", "--text", text, "--config", "gpt-tiny", "--attn", "elliptical",
                               "--steps", "6", "--eval-every", "3", "--batch", "2", "--seed", "7", "--resume", out,
                               "--detect-anomaly"},
                              dir);
  CHECK(run.status == 1);
  CHECK(run.err.find("detect-anomaly: the forward of '") != std::string::npos);
  CHECK(checkpoint_bytes(out) == poisoned);
}

TEST_CASE("train_vit: a NaN loss stops it with the checkpoint unchanged; --detect-anomaly says where it came from") {
  TempDir dir;
  const std::string data = dir / "data";
  ellipse::testing::write_dataset(data, 64, 32);
  const std::string out = dir / "run";
  ViTTrainOptions o = tiny_vit_run(data, out);
  o.stop_after = 4;  // the end of epoch 1: a checkpoint and a metrics line
  train_vit(o, nullptr, nullptr);
  poison_state(out, "cls_token", NAN);  // attention spreads it to every token
  const auto before = checkpoint_bytes(out);
  o.resume = true;
  o.stop_after = 0;
  CHECK_ERROR(train_vit(o, nullptr, nullptr), "train vit: the loss became nan at step 5", "(step 4)", out,
              "the detect_anomaly option");
  CHECK(checkpoint_bytes(out) == before);
  o.detect_anomaly = true;
  CHECK_ERROR(train_vit(o, nullptr, nullptr), "the loss became nan", "no op produced");
  CHECK(checkpoint_bytes(out) == before);
  // The command-line program: exit status 1, the message on stderr, the files unchanged.
  const Run run = run_ellipse({"train", "vit", "--data", data, "--config", "vit-xs", "--epochs", "2", "--batch", "16",
                               "--limit-train", "64", "--limit-test", "32", "--seed", "3", "--resume", out,
                               "--detect-anomaly"},
                              dir);
  CHECK(run.status == 1);
  CHECK(run.err.find("no op produced") != std::string::npos);
  CHECK(checkpoint_bytes(out) == before);
}

// ---- resources ----

TEST_CASE("impossible allocations throw errors that state the size") {
  CHECK_ERROR(empty({std::int64_t{1} << 40, std::int64_t{1} << 30}), "empty", "[1099511627776, 1073741824]", "f32",
              "bytes");
  CHECK_ERROR(empty({std::int64_t{1} << 45}, DType::f64), "allocate", "281474976710656 bytes");
  CHECK_ERROR(zeros({std::int64_t{1} << 20, std::int64_t{1} << 20}), "allocate", "4398046511104 bytes");
}

// ---- determinism and threads ----

TEST_CASE("training is bit-identical across runs and when two runs share the process on two threads") {
  TempDir dir;
  const std::string text = dir / "text.txt";
  write_bytes(text, pattern_text(1500));
  train_gpt(tiny_run(text, dir / "a"), nullptr, nullptr);
  train_gpt(tiny_run(text, dir / "b"), nullptr, nullptr);
  GPTTrainOptions standard = tiny_run(text, dir / "c");
  standard.attention = "standard";
  standard.seed = 11;
  train_gpt(standard, nullptr, nullptr);
  REQUIRE(losses(dir / "a/metrics.jsonl").size() == 2);
  CHECK(losses(dir / "a/metrics.jsonl") == losses(dir / "b/metrics.jsonl"));
  CHECK(read_bytes(dir / "a/model.safetensors") == read_bytes(dir / "b/model.safetensors"));

  // The same two runs at once, one per thread, each with its own OpenMP team and OpenBLAS calls.
  GPTTrainOptions standard_again = standard;
  standard_again.out_dir = dir / "t2";
  std::thread first([&] { train_gpt(tiny_run(text, dir / "t1"), nullptr, nullptr); });
  std::thread second([&] { train_gpt(standard_again, nullptr, nullptr); });
  first.join();
  second.join();
  CHECK(read_bytes(dir / "t1/model.safetensors") == read_bytes(dir / "a/model.safetensors"));
  CHECK(read_bytes(dir / "t2/model.safetensors") == read_bytes(dir / "c/model.safetensors"));
  CHECK(losses(dir / "t1/metrics.jsonl") == losses(dir / "a/metrics.jsonl"));
  CHECK(losses(dir / "t2/metrics.jsonl") == losses(dir / "c/metrics.jsonl"));
}

// ---- crash safety ----

TEST_CASE("checkpoints survive SIGKILL at random moments, and --resume reproduces the uninterrupted run") {
  TempDir dir;
  const std::string text = dir / "text.txt";
  write_bytes(text, pattern_text(1500));
  // ELLIPSE_KILL_ITERATIONS=N runs more kills (docs/reliability.md records such a run), over a longer run.
  const char* requested = std::getenv("ELLIPSE_KILL_ITERATIONS");
  const int iterations = requested ? std::atoi(requested) : 12;
  const std::vector<std::string> flags{"train", "gpt", "--text", text, "--config", "gpt-tiny", "--steps",
                                       std::to_string(std::max(24, 2 * iterations)), "--eval-every", "1", "--batch",
                                       "2", "--seed", "5"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = flags;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  using std::chrono::steady_clock;
  auto t0 = steady_clock::now();
  REQUIRE(wait_for(spawn_ellipse(with({"--out", dir / "reference"}))) == 0);
  const auto uninterrupted = steady_clock::now() - t0;
  // Start-up alone: resuming the finished run loads it and has nothing left to do.
  t0 = steady_clock::now();
  REQUIRE(wait_for(spawn_ellipse(with({"--resume", dir / "reference"}))) == 0);
  const auto startup = steady_clock::now() - t0;
  const auto per_step = (uninterrupted - std::min(startup, uninterrupted)) / std::stoi(flags[7]);
  // Kills land anywhere from start-up to a few steps in, so that each run gets a little further.
  std::uniform_int_distribution<std::int64_t> delay(
      0, std::chrono::duration_cast<std::chrono::microseconds>(startup + 6 * per_step).count());

  const std::string out = dir / "victim";
  const std::string state = out + "/train_state.safetensors";
  std::mt19937_64 random(12345);
  int kills = 0, mid_write = 0;
  for (int i = 0; i < iterations; ++i) {
    const pid_t pid = spawn_ellipse(fs::exists(state) ? with({"--resume", out}) : with({"--out", out}));
    std::this_thread::sleep_for(std::chrono::microseconds(delay(random)));
    ::kill(pid, SIGKILL);
    const int status = wait_for(pid);
    REQUIRE((status == 128 + SIGKILL || status == 0));
    if (status != 128 + SIGKILL) break;
    ++kills;
    bool temp_left = false;
    if (!fs::exists(out)) continue;  // killed before the run created its folder (start-up is slower with CUDA)
    for (const auto& entry : fs::directory_iterator(out))
      temp_left = temp_left || entry.path().filename().string().find(".tmp.") != std::string::npos;
    mid_write += temp_left;
    // Whatever the moment, the last checkpoint loads: the state (the commit point) and its parameters.
    if (fs::exists(state)) {
      const auto saved = parse_gpt_config_json(read_bytes(out + "/config.json"), out + "/config.json");
      GPT model(saved.config);
      nn::AdamW optimizer(model.parameters(), {});
      CHECK_NOTHROW(load_train_state(state, model, optimizer));
      if (fs::exists(out + "/model.safetensors")) CHECK_NOTHROW(load_parameters(out + "/model.safetensors", model));
    }
  }
  MESSAGE(kills, " kills, ", mid_write, " of them during a checkpoint write");
  CHECK(kills > 0);
  // Finish without interruption: the metrics and the final model match the uninterrupted run exactly.
  REQUIRE(wait_for(spawn_ellipse(fs::exists(state) ? with({"--resume", out}) : with({"--out", out}))) == 0);
  CHECK(losses(out + "/metrics.jsonl") == losses(dir / "reference/metrics.jsonl"));
  CHECK(read_bytes(out + "/model.safetensors") == read_bytes(dir / "reference/model.safetensors"));
  for (const auto& entry : fs::directory_iterator(out))
    CHECK_MESSAGE(entry.path().filename().string().find(".tmp.") == std::string::npos, entry.path());
}

TEST_CASE("a checkpoint interrupted between its files is completed by --resume, never accepted inconsistent") {
  TempDir dir;
  const std::string text = dir / "text.txt";
  write_bytes(text, pattern_text(1500));
  GPTTrainOptions o = tiny_run(text, dir / "run");
  train_gpt(o, nullptr, nullptr);
  const auto finished = checkpoint_bytes(dir / "run");

  // A kill after metrics.jsonl of step 6 was written but before the state was: metrics one line ahead.
  o.out_dir = dir / "partial";
  o.stop_after = 3;
  train_gpt(o, nullptr, nullptr);
  const std::string step3_model = read_bytes(dir / "partial/model.safetensors");
  write_bytes(dir / "partial/metrics.jsonl", finished.at("metrics.jsonl"));
  o.resume = true;
  o.stop_after = 0;
  train_gpt(o, nullptr, nullptr);
  CHECK(read_bytes(dir / "partial/model.safetensors") == finished.at("model.safetensors"));
  CHECK(losses(dir / "partial/metrics.jsonl") == losses(dir / "run/metrics.jsonl"));
  // A kill after the state of step 6 was committed but before model.safetensors was: the model of step 3.
  write_bytes(dir / "partial/model.safetensors", step3_model);
  const Run eval_stale = run_ellipse({"eval", "gpt", "--model", dir / "partial", "--text", text}, dir);
  CHECK(eval_stale.status == 0);  // the model of step 3 is a valid model
  train_gpt(o, nullptr, nullptr);  // nothing left to train: completes the checkpoint
  CHECK(read_bytes(dir / "partial/model.safetensors") == finished.at("model.safetensors"));
  // ... or none at all, after the first save.
  fs::remove(dir / "partial/model.safetensors");
  train_gpt(o, nullptr, nullptr);
  CHECK(read_bytes(dir / "partial/model.safetensors") == finished.at("model.safetensors"));

  // A model file ahead of the state cannot come from a crash: refused, nothing written.
  GPTTrainOptions early = tiny_run(text, dir / "early");
  early.stop_after = 3;
  train_gpt(early, nullptr, nullptr);
  write_bytes(dir / "early/model.safetensors", finished.at("model.safetensors"));
  const auto before = checkpoint_bytes(dir / "early");
  early.resume = true;
  early.stop_after = 0;
  CHECK_ERROR(train_gpt(early, nullptr, nullptr), "model.safetensors is at step 6", "at step 3", "inconsistent");
  CHECK(checkpoint_bytes(dir / "early") == before);
}

TEST_CASE("train_vit: a checkpoint interrupted between its files is completed by --resume, never accepted "
          "inconsistent") {
  TempDir dir;
  const std::string data = dir / "data";
  ellipse::testing::write_dataset(data, 64, 32);
  train_vit(tiny_vit_run(data, dir / "full"), nullptr, nullptr);
  const auto finished = checkpoint_bytes(dir / "full");

  // Killed after metrics.jsonl of step 8 was written but before the state was: metrics one line ahead.
  ViTTrainOptions o = tiny_vit_run(data, dir / "partial");
  o.stop_after = 4;
  train_vit(o, nullptr, nullptr);
  const std::string step4_model = read_bytes(dir / "partial/model.safetensors");
  write_bytes(dir / "partial/metrics.jsonl", finished.at("metrics.jsonl"));
  o.resume = true;
  o.stop_after = 6;
  train_vit(o, nullptr, nullptr);
  const std::string step6_model = read_bytes(dir / "partial/model.safetensors");
  // Killed after the state of step 6 was committed but before model.safetensors was: the model of step 4,
  // which a resume that trains nothing (--stop-after 6) completes; and again with no model file at all.
  write_bytes(dir / "partial/model.safetensors", step4_model);
  CHECK(checkpoint_step(RunFiles(dir / "partial")) == 6);
  train_vit(o, nullptr, nullptr);
  CHECK(read_bytes(dir / "partial/model.safetensors") == step6_model);
  fs::remove(dir / "partial/model.safetensors");
  train_vit(o, nullptr, nullptr);
  CHECK(read_bytes(dir / "partial/model.safetensors") == step6_model);
  // To the end: the same files as the uninterrupted run, bit for bit (metrics without their timings).
  o.stop_after = 0;
  train_vit(o, nullptr, nullptr);
  for (const char* file : {"model.safetensors", "train_state.safetensors", "config.json"}) {
    CAPTURE(file);
    CHECK(read_bytes(dir / "partial/" + file) == finished.at(file));
  }
  CHECK(losses(dir / "partial/metrics.jsonl") == losses(dir / "full/metrics.jsonl"));

  // A model file ahead of the state cannot come from a crash: refused, nothing written.
  ViTTrainOptions early = tiny_vit_run(data, dir / "early");
  early.stop_after = 4;
  train_vit(early, nullptr, nullptr);
  write_bytes(dir / "early/model.safetensors", finished.at("model.safetensors"));
  const auto before = checkpoint_bytes(dir / "early");
  early.resume = true;
  early.stop_after = 0;
  CHECK_ERROR(train_vit(early, nullptr, nullptr), "model.safetensors is at step 8", "at step 4", "inconsistent");
  CHECK(checkpoint_bytes(dir / "early") == before);
  // A fresh run refuses a folder holding a model file, even without a state.
  fs::remove(dir / "early/train_state.safetensors");
  CHECK_ERROR(train_vit(tiny_vit_run(data, dir / "early"), nullptr, nullptr), "already holds a run",
              "resume it (the resume option) or choose another output directory");
}

// ---- the command-line program on bad files ----

TEST_CASE("cli: corrupt checkpoints and configs fail with status 1, a message naming the file, nothing changed") {
  TempDir dir;
  const std::string text = dir / "text.txt";
  write_bytes(text, pattern_text(1500));
  const std::string run = dir / "run";
  REQUIRE(wait_for(spawn_ellipse({"train", "gpt", "--text", text, "--config", "gpt-tiny", "--steps", "2",
                                  "--eval-every", "2", "--batch", "2", "--out", run})) == 0);
  const auto good = checkpoint_bytes(run);
  const std::string model = good.at("model.safetensors"), config = good.at("config.json");
  const std::uint64_t header = static_cast<unsigned char>(model[0]) | static_cast<unsigned>(model[1]) << 8;
  std::string bad_json = model, bad_dtype = model, bad_shape = model, missing = model;
  bad_json[8] = '[';
  const auto replace_once = [](std::string& bytes, const std::string& from, const std::string& to) {
    const auto at = bytes.find(from);
    REQUIRE(at != std::string::npos);
    bytes.replace(at, from.size(), to);
  };
  replace_once(bad_dtype, "\"F32\"", "\"BF8\"");
  replace_once(bad_shape, "\"shape\":[", "\"shape\":[9,");
  replace_once(missing, "head.weight", "head.wrongt");
  std::string wrong_offsets = model;
  replace_once(wrong_offsets, "\"data_offsets\":[0,", "\"data_offsets\":[4,");
  std::string huge_length = model;
  huge_length[7] = '\x7f';

  const auto patched = [&](const nlohmann::json& patch) {
    auto json = nlohmann::json::parse(config);
    json.merge_patch(patch);
    return json.dump();
  };
  struct Case {
    std::string file, bytes, needle;
  };
  const std::vector<Case> cases{
      {"model.safetensors", "", "model.safetensors"},
      {"model.safetensors", model.substr(0, 7), "too short"},
      {"model.safetensors", model.substr(0, 8 + header / 2), "exceeds"},
      {"model.safetensors", model.substr(0, model.size() - 1), "model.safetensors"},
      {"model.safetensors", model + "x", "trailing"},
      {"model.safetensors", huge_length, "header length"},
      {"model.safetensors", bad_json, "JSON"},
      {"model.safetensors", bad_dtype, "BF8"},
      {"model.safetensors", bad_shape, "model.safetensors"},
      {"model.safetensors", missing, "head.wrongt"},
      {"model.safetensors", wrong_offsets, "model.safetensors"},
      {"config.json", "", "config.json"},
      {"config.json", "{\"model\": \"gpt\"", "config.json"},
      {"config.json", "[1, 2]", "not a JSON object"},
      {"config.json", std::string(100000, '['), "config.json"},
      {"config.json", patched({{"n_layer", -2}}), "n_layer"},
      {"config.json", patched({{"n_head", 5}}), "multiple"},
      {"config.json", patched({{"d_model", 65536}, {"n_layer", 256}}),
       "parameters"},
      {"config.json", patched({{"vocab", "aa"}}), "twice"},
      {"config.json", patched({{"attn", "fancy"}}), "fancy"},
      {"config.json", patched({{"seq_len", "long"}}), "seq_len"},
      {"config.json", config.substr(0, config.size() / 2), "config.json"},
  };
  for (const auto& c : cases) {
    INFO(c.file, ": ", c.needle);
    write_bytes(run + "/" + c.file, c.bytes);
    const auto corrupt = checkpoint_bytes(run);
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"eval", "gpt", "--model", run, "--text", text},
             {"sample", "--model", run, "--prompt", "ab", "--tokens", "3"},
             {"train", "gpt", "--text", text, "--config", "gpt-tiny", "--steps", "2", "--eval-every", "2", "--batch",
              "2", "--resume", run}}) {
      const Run r = run_ellipse(args, dir);
      INFO(args[0], " stderr: ", r.err);
      CHECK(r.status == 1);
      CHECK(r.err.find(c.needle) != std::string::npos);
      CHECK(checkpoint_bytes(run) == corrupt);
    }
    write_bytes(run + "/" + c.file, good.at(c.file));
  }
  // Bad texts.
  write_bytes(dir / "empty.txt", "");
  write_bytes(dir / "short.txt", "abcdef");
  write_bytes(dir / "latin1.txt", pattern_text(1500) + "caf\xe9");
  for (const auto& [file, needle] : std::vector<std::pair<std::string, std::string>>{
           {"empty.txt", "empty"}, {"short.txt", "too few"}, {"latin1.txt", "invalid UTF-8"}}) {
    const Run train = run_ellipse({"train", "gpt", "--text", dir / file, "--config", "gpt-tiny", "--out",
                                   dir / ("out-" + file)}, dir);
    CHECK(train.status == 1);
    CHECK(train.err.find(needle) != std::string::npos);
    const Run eval = run_ellipse({"eval", "gpt", "--model", run, "--text", dir / file}, dir);
    CHECK(eval.status == 1);
    CHECK(eval.err.find(file) != std::string::npos);
  }
  CHECK(checkpoint_bytes(run) == good);
}

TEST_CASE("cli: bad flag values are usage errors (status 2), including NaN") {
  TempDir dir;
  const std::string text = dir / "text.txt";
  write_bytes(text, pattern_text(1500));
  const std::vector<std::vector<std::string>> bad{
      {"train", "gpt", "--text", text, "--lr", "nan"},
      {"train", "gpt", "--text", text, "--lr", "inf"},
      {"train", "gpt", "--text", text, "--lr", "0"},
      {"train", "gpt", "--text", text, "--seed", "-1"},
      {"train", "gpt", "--text", text, "--steps", "1e99"},
      {"train", "gpt", "--text", text, "--stop-after", "0"},
      {"train", "gpt", "--text", text, "--detect-anomaly=maybe"},
      {"sample", "--model", dir.str(), "--prompt", "a", "--temperature", "nan"},
      {"sample", "--model", dir.str(), "--prompt", "a", "--top-k", "-1"},
      {"train", "vit", "--data", dir.str(), "--lr", "nan"},
      {"train", "vit", "--data", dir.str(), "--weight-decay", "nan"},
      {"train", "vit", "--data", dir.str(), "--warmup-epochs", "nan"},
      {"train", "vit", "--data", dir.str(), "--seed", "-1"},
      {"train", "vit", "--data", dir.str(), "--detect-anomaly=maybe"},
      {"eval", "vit", "--model", dir.str(), "--seed", "-1"},
  };
  for (auto args : bad) {
    if (args[0] == "train") {  // were a bad value accepted, the run would be short and go to the scratch folder
      for (const char* extra : {"--config", args[1] == "gpt" ? "gpt-tiny" : "vit-xs", "--out"}) args.push_back(extra);
      args.push_back(dir / "accepted");
    }
    const Run r = run_ellipse(args, dir);
    INFO(args[4], " ", args[5], ": ", r.err);
    CHECK(r.status == 2);
    CHECK_FALSE(r.err.empty());
  }
}
