// The ellipse program (cli/): help for every subcommand, exit status 2 for usage errors and 1 for runtime
// errors with a message on stderr (never a crash), and train -> eval -> sample on a tiny text.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_runner.hpp"
#include "core/io/npy.hpp"
#include "helpers.hpp"
#include "models/vit.hpp"

namespace fs = std::filesystem;

namespace {

using ellipse::testing::Run;
using ellipse::testing::run_ellipse;
using ellipse::testing::TempDir;

std::string joined(const std::vector<std::string>& args) {
  std::string s;
  for (const auto& a : args) s += a + " ";
  return s;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string pattern_text(std::size_t length) {
  const std::string words[] = {"abc ", "bad ", "cab\n", "dace ", "face ", "bead\n"};
  std::string text;
  for (std::size_t i = 0; text.size() < length; ++i) text += words[(i * 7 + i / 3) % 6];
  return text.substr(0, length);
}

// The command fails cleanly: the expected status, a message on stderr, no crash.
void check_fails(const std::vector<std::string>& args, int status, const std::string& needle = "") {
  const Run r = run_ellipse(args);
  INFO("ellipse ", joined(args));
  INFO("stdout: ", r.out);
  INFO("stderr: ", r.err);
  CHECK(r.status == status);
  CHECK(r.status < 128);
  CHECK_FALSE(r.err.empty());
  if (!needle.empty()) CHECK(r.err.find(needle) != std::string::npos);
}

}  // namespace

TEST_CASE("cli: --help and --version exit 0 for the program and every subcommand") {
  const std::vector<std::vector<std::string>> commands{{},          {"train"},  {"train", "gpt"}, {"eval"},
                                                       {"eval", "gpt"}, {"sample"}, {"demo"},         {"bench"}};
  for (const auto& command : commands) {
    auto args = command;
    args.push_back("--help");
    const Run r = run_ellipse(args);
    INFO("ellipse ", joined(args));
    INFO("stderr: ", r.err);
    CHECK(r.status == 0);
    CHECK(r.out.find("Usage") != std::string::npos);
    CHECK(r.out.find("Exit status: 0 success") != std::string::npos);
    args.back() = "--version";
    const Run v = run_ellipse(args);
    CHECK(v.status == 0);
    CHECK(v.out.find("ellipse 0.") != std::string::npos);
  }
  const Run help = run_ellipse({"train", "gpt", "--help"});
  for (const char* flag : {"--text", "--config", "--attn", "--m-mode", "--steps", "--batch", "--lr", "--seed",
                           "--eval-every", "--out", "--resume", "--stop-after"})
    CHECK_MESSAGE(help.out.find(flag) != std::string::npos, flag);
  const Run version = run_ellipse({"--version"});
  CHECK(version.status == 0);
  CHECK(version.out.find("ellipse") != std::string::npos);
}

TEST_CASE("cli: usage errors exit 2 and runtime errors exit 1, with a message on stderr") {
  TempDir dir;
  const std::string text = dir / "text.txt";
  write_file(text, pattern_text(2000));
  const std::string short_text = dir / "short.txt";
  write_file(short_text, pattern_text(300));

  check_fails({}, 2);
  check_fails({"frobnicate"}, 2);
  check_fails({"train"}, 2);
  check_fails({"demo", "--bogus"}, 2, "--bogus");
  check_fails({"demo", "--steps", "0"}, 2);
  check_fails({"train", "gpt", "--text", text, "--bogus", "1"}, 2, "--bogus");
  check_fails({"train", "gpt"}, 2, "--text");
  check_fails({"train", "gpt", "--text", text, "--steps", "-1"}, 2, "--steps");
  check_fails({"train", "gpt", "--text", text, "--steps", "0"}, 2, "--steps");
  check_fails({"train", "gpt", "--text", text, "--steps", "ten"}, 2, "--steps");
  check_fails({"train", "gpt", "--text", text, "--attn", "fancy"}, 2, "fancy");
  check_fails({"train", "gpt", "--text", text, "--m-mode", "global"}, 2, "global");
  check_fails({"train", "gpt", "--text", text, "--config", "gpt-xl"}, 2, "gpt-xl");
  check_fails({"train", "gpt", "--text", text, "--batch", "0"}, 2, "--batch");
  check_fails({"train", "gpt", "--text", text, "--eval-every", "-3"}, 2, "--eval-every");
  check_fails({"train", "gpt", "--text", text, "--lr", "-1"}, 2, "--lr");
  check_fails({"train", "gpt", "--text", dir / "missing.txt"}, 2, "missing.txt");
  check_fails({"train", "gpt", "--text", text, "--resume", dir / "nowhere"}, 2, "nowhere");
  check_fails({"eval", "gpt", "--text", text}, 2, "--model");
  check_fails({"eval", "gpt", "--model", dir.str()}, 2, "--text or --ids");
  check_fails({"eval", "gpt", "--model", dir.str(), "--text", text, "--logits", dir / "l.npy"}, 2, "--ids");
  check_fails({"sample", "--model", dir.str()}, 2, "--prompt");
  check_fails({"sample", "--model", dir.str(), "--prompt", "a", "--tokens", "0"}, 2, "--tokens");
  check_fails({"sample", "--model", dir.str(), "--prompt", "a", "--temperature", "-1"}, 2, "--temperature");
  check_fails({"bench", "--attn", "fancy"}, 2, "fancy");

  // Runtime errors: the flags parse, the work fails.
  check_fails({"train", "gpt", "--text", short_text, "--out", dir / "short", "--steps", "2"}, 1, "too few");
  check_fails({"train", "gpt", "--text", text, "--out", dir / "r", "--steps", "4", "--stop-after", "5"}, 1,
              "stop_after 5 must lie in [0, steps 4]");
  check_fails({"sample", "--model", dir.str(), "--prompt", "a"}, 1, "config.json");
  check_fails({"eval", "gpt", "--model", dir.str(), "--text", text}, 1, "config.json");
  check_fails({"train", "gpt", "--text", text, "--resume", dir.str(), "--steps", "2"}, 1, "config.json");
  write_file(dir / "bad.txt", "abc\xC3(def");
  check_fails({"train", "gpt", "--text", dir / "bad.txt", "--out", dir / "bad"}, 1, "byte offset 3");
}

TEST_CASE("cli: bench prints a step's time, its matrix-product FLOPs and its distance to the GEMM floor") {
  const Run run = run_ellipse({"bench", "--config", "vit-xs", "--attn", "elliptical", "--batch", "4", "--steps", "2",
                               "--warmup", "0"});
  INFO("stdout: ", run.out, "\nstderr: ", run.err);
  REQUIRE(run.status == 0);
  const auto line = nlohmann::json::parse(run.out);
  CHECK(line["config"] == "vit-xs");
  CHECK(line["attn"] == "elliptical");
  ellipse::ViTConfig config = ellipse::vit_preset("vit-xs");
  config.batch = 4;
  const double step_gflop = ellipse::vit_step_flops(config) / 1e9;
  CHECK(line["step_gflop"].get<double>() == doctest::Approx(step_gflop).epsilon(1e-4));
  const double step_ms = line["step_ms"], gemm_gflops = line["gemm_gflops"], floor_ms = line["floor_ms"];
  CHECK(gemm_gflops > 0);
  CHECK(floor_ms == doctest::Approx(step_gflop / gemm_gflops * 1e3).epsilon(1e-2));
  CHECK(line["floor_ratio"].get<double>() == doctest::Approx(step_ms / floor_ms).epsilon(1e-2));
  CHECK(line["peak_rss_mib"].get<double>() > 0);
}

TEST_CASE("cli: train, eval and sample a tiny checkpoint") {
  TempDir dir;
  const std::string text = dir / "text.txt";
  write_file(text, pattern_text(2000));
  const std::string run = dir / "run";
  const Run train = run_ellipse({"train", "gpt", "--text", text, "--steps", "2", "--eval-every", "2", "--batch", "2",
                             "--attn", "elliptical", "--out", run});
  INFO("stdout: ", train.out);
  INFO("stderr: ", train.err);
  REQUIRE(train.status == 0);
  CHECK(train.out.find("val_loss") != std::string::npos);
  for (const char* file : {"model.safetensors", "config.json", "train_state.safetensors", "metrics.jsonl"})
    CHECK_MESSAGE(fs::exists(run + "/" + file), file);
  // --json: stdout holds one JSON line per evaluation and nothing else.
  const Run json = run_ellipse({"train", "gpt", "--text", text, "--steps", "2", "--eval-every", "1", "--batch", "2",
                                "--out", dir / "json", "--json"});
  INFO("--json stdout: ", json.out);
  CHECK(json.status == 0);
  std::istringstream lines(json.out);
  int evaluations = 0;
  for (std::string line; std::getline(lines, line); ++evaluations) {
    CHECK(line.starts_with("{\"step\": "));
    CHECK(line.find("\"val_loss\": ") != std::string::npos);
    CHECK(line.ends_with("}"));
  }
  CHECK(evaluations == 2);
  // A second fresh run into the same directory is refused; --resume with another --out too.
  check_fails({"train", "gpt", "--text", text, "--steps", "2", "--out", run}, 1, "already");
  check_fails({"train", "gpt", "--text", text, "--steps", "2", "--resume", run, "--out", dir / "elsewhere"}, 1,
              "elsewhere");

  // A gpt-tiny run (the preset's batch is 4, which config.json does not record) resumes without --batch.
  const std::string tiny = dir / "tiny";
  const std::vector<std::string> tiny_flags{"train", "gpt", "--text", text, "--config", "gpt-tiny", "--steps", "4",
                                            "--eval-every", "2"};
  auto with = [&](std::vector<std::string> args, const std::vector<std::string>& more) {
    args.insert(args.end(), more.begin(), more.end());
    return args;
  };
  REQUIRE(run_ellipse(with(tiny_flags, {"--stop-after", "2", "--out", tiny})).status == 0);
  const Run tiny_resume = run_ellipse(with(tiny_flags, {"--resume", tiny}));
  INFO("gpt-tiny --resume stderr: ", tiny_resume.err);
  CHECK(tiny_resume.status == 0);
  CHECK(tiny_resume.out.find("done: step 4") != std::string::npos);

  const Run eval = run_ellipse({"eval", "gpt", "--model", run, "--text", text});
  INFO("eval stderr: ", eval.err);
  CHECK(eval.status == 0);
  CHECK(eval.out.find("\"attn\": \"elliptical\"") != std::string::npos);
  CHECK(eval.out.find("\"m_mode\": \"causal\"") != std::string::npos);
  CHECK(eval.out.find("\"val_loss\"") != std::string::npos);

  // Token ids from another tool: logits [2, 5, vocab] to a .npy file, the next-token loss to the JSON line.
  const std::string ids = dir / "ids.npy", logits = dir / "logits.npy";
  ellipse::io::save_npy(ids, ellipse::from_vector<std::int64_t>({1, 2, 3, 4, 5, 6, 7, 0, 1, 2}, {2, 5}));
  const Run eval_ids = run_ellipse({"eval", "gpt", "--model", run, "--ids", ids, "--logits", logits});
  INFO("eval --ids stderr: ", eval_ids.err);
  CHECK(eval_ids.status == 0);
  CHECK(eval_ids.out.find("\"ids_loss\"") != std::string::npos);
  CHECK(eval_ids.out.find("\"val_loss\"") == std::string::npos);
  CHECK(ellipse::io::load_npy(logits).shape() == ellipse::Shape{2, 5, 8});
  ellipse::io::save_npy(ids, ellipse::from_vector<double>({1, 2}, {1, 2}));
  check_fails({"eval", "gpt", "--model", run, "--ids", ids}, 1, "integer token ids");

  const std::string vocab = "\n abcdef";
  // Prompt + N characters + newline; 140 + the prompt runs past the context of 128.
  for (const auto& [prompt, tokens] : {std::pair<std::string, std::string>{"ab", "140"}, {"cab\nbad ", "7"}}) {
    const Run sample = run_ellipse({"sample", "--model", run, "--prompt", prompt, "--tokens", tokens, "--seed", "3"});
    INFO("sample stderr: ", sample.err);
    CHECK(sample.status == 0);
    const std::size_t n = std::stoul(tokens);
    REQUIRE(sample.out.size() == prompt.size() + n + 1);
    CHECK(sample.out.substr(0, prompt.size()) == prompt);
    CHECK(sample.out.back() == '\n');
    for (char c : sample.out.substr(prompt.size(), n)) CHECK(vocab.find(c) != std::string::npos);
    if (n < 20) {  // the same seed gives the same text
      CHECK(run_ellipse({"sample", "--model", run, "--prompt", prompt, "--tokens", tokens, "--seed", "3"}).out == sample.out);
    }
  }
  const Run greedy = run_ellipse({"sample", "--model", run, "--prompt", "a", "--tokens", "5", "--temperature", "0"});
  CHECK(greedy.status == 0);
  CHECK(greedy.out.size() == 1 + 5 + 1);
  check_fails({"sample", "--model", run, "--prompt", "xyz"}, 1, "'x'");
  check_fails({"sample", "--model", run, "--prompt", "a\xFF"}, 1, "--prompt");
}
