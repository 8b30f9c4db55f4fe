// Devices above the op level: Module::to, checkpoints written from any device, and --device on the
// command line. The tests run on every available device; where CUDA is unavailable, the command-line test
// checks instead that asking for it fails cleanly, and says which of the two it did.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli_runner.hpp"
#include "core/io/file.hpp"
#include "helpers.hpp"
#include "models/checkpoint.hpp"
#include "models/gpt.hpp"
#include "nn/optim.hpp"

using namespace ellipse;
namespace fs = std::filesystem;

namespace {

using ellipse::testing::available_devices;
using ellipse::testing::run_ellipse;
using ellipse::testing::TempDir;
using ellipse::testing::test_devices;

constexpr std::int64_t kVocab = 7;

// gpt-tiny with elliptical attention, so that every kind of parameter and op is involved.
GPT tiny_gpt(std::uint64_t seed) {
  GPTConfig config = gpt_preset("gpt-tiny", kVocab);
  config.attention = "elliptical";
  return GPT(config, seed);
}

// Token ids [2, 16] on `device`, the same for every device.
Tensor tiny_ids(Device device) {
  Generator gen(11);
  return randint({2, 16}, kVocab, gen, device);
}

// One AdamW step on the next-token loss of tiny_ids.
void train_step(GPT& model, nn::AdamW& optimizer) {
  const Tensor ids = tiny_ids(model.device());
  optimizer.zero_grad();
  cross_entropy(model.forward(ids.narrow(1, 0, 15)), ids.narrow(1, 1, 15)).backward();
  optimizer.step();
}

std::string read_bytes(const std::string& path) { return io::read_file(path, std::uint64_t{1} << 30); }

void check_close(const std::vector<double>& actual, const std::vector<double>& expected, double tolerance) {
  REQUIRE(actual.size() == expected.size());
  double worst = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) worst = std::max(worst, std::abs(actual[i] - expected[i]));
  CHECK(worst <= tolerance);
}

// The CUDA entry of test_devices(): its skip reason is empty when a CUDA backend is usable.
testing::TestDevice cuda_entry() {
  for (const auto& d : test_devices())
    if (!d.device.is_cpu()) return d;
  FAIL("test_devices() lists no CUDA device");
  return {};
}

// A small text for `train gpt`.
void write_text(const std::string& path) {
  std::ofstream out(path, std::ios::binary);
  for (int i = 0; i < 60; ++i) out << "a cab, a bead and a face\n";
}

// The JSON lines of a command's stdout.
std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

}  // namespace

TEST_CASE("a run on the CPU never loads cuBLAS, whatever backends the build has") {
  // cuBLAS and cuBLASLt cost about 150 MiB of resident memory once loaded: the CUDA backend opens them only
  // when it makes a device. Asking for one on a machine without a GPU fails before that.
  Generator gen(0);
  const Tensor x = randn({64, 64}, gen);
  CHECK(matmul(x, x).shape() == Shape{64, 64});
  const auto& cuda = cuda_entry();
  if (!cuda.skip_reason.empty()) CHECK_THROWS_AS(x.to(Device::cuda()), Error);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  bool loaded = false;
  while (std::getline(maps, line)) loaded = loaded || line.find("libcublas") != std::string::npos;
  if (cuda.skip_reason.empty()) MESSAGE("a CUDA device is in use here, so cuBLAS may be loaded; nothing to check");
  else CHECK_FALSE(loaded);
}

TEST_CASE("Module::to: to the CPU is a no-op that keeps the storage and the gradients") {
  GPT model = tiny_gpt(1);
  nn::AdamW optimizer(model.parameters());
  train_step(model, optimizer);
  std::vector<const Storage*> storages;
  for (const auto& p : model.parameters()) storages.push_back(p.storage().get());
  CHECK(&model.to(Device::cpu()) == &model);
  CHECK(model.device() == Device::cpu());
  const auto params = model.parameters();
  for (std::size_t i = 0; i < params.size(); ++i) {
    CHECK(params[i].storage().get() == storages[i]);
    CHECK(params[i].grad().defined());
  }
}

TEST_CASE("Module::to: every handle follows the move; the model trains there and comes back unchanged") {
  for (const auto& d : available_devices()) {
    if (d.device.is_cpu()) continue;  // the no-op above
    INFO("device ", d.device.str());
    GPT model = tiny_gpt(2);
    const Tensor head = model.parameter("head.weight");  // a handle taken before the move
    const auto head_values = head.to_vector<double>();
    const auto cpu_logits = model.forward(tiny_ids(Device::cpu())).to_vector<double>();

    model.to(d.device);
    CHECK(model.device() == d.device);
    CHECK(head.device() == d.device);
    CHECK(head.is_contiguous());
    CHECK(head.offset() == 0);
    CHECK(head.requires_grad());
    CHECK(head.to_vector<double>() == head_values);
    // The forward reads the modules' own members: they moved with the handle above.
    check_close(model.forward(tiny_ids(d.device)).to_vector<double>(), cpu_logits, 1e-4);

    nn::AdamW optimizer(model.parameters());
    train_step(model, optimizer);
    CHECK(head.grad().defined());
    const auto trained = head.to_vector<double>();
    CHECK(trained != head_values);
    model.to(Device::cpu());
    CHECK(head.device() == Device::cpu());
    CHECK_FALSE(head.grad().defined());  // dropped by the move
    CHECK(head.to_vector<double>() == trained);
  }
}

TEST_CASE("Module::to: an unusable device throws naming it, and nothing moves") {
  for (const auto& d : test_devices()) {
    if (!d.skip_reason.empty()) {
      GPT model = tiny_gpt(3);
      std::vector<const Storage*> storages;
      for (const auto& p : model.parameters()) storages.push_back(p.storage().get());
      CHECK_ERROR(model.to(d.device), d.device.str());
      const auto params = model.parameters();
      for (std::size_t i = 0; i < params.size(); ++i) {
        CHECK(params[i].device() == Device::cpu());
        CHECK(params[i].storage().get() == storages[i]);
      }
    }
  }
}

TEST_CASE("checkpoints: a model and its training state write the same bytes from every device") {
  TempDir dir;
  GPT reference = tiny_gpt(4);
  nn::AdamW reference_optimizer(reference.parameters());
  train_step(reference, reference_optimizer);  // moments that are not zero
  save_parameters(dir / "cpu.safetensors", reference);
  const TrainState state{.step = 1, .generators = {{"model", {1, 2, 3}}}, .fields = {{"flags", "x"}}};
  save_train_state(dir / "cpu_state.safetensors", reference, reference_optimizer, state);
  const std::string model_bytes = read_bytes(dir / "cpu.safetensors");
  const std::string state_bytes = read_bytes(dir / "cpu_state.safetensors");

  for (const auto& d : available_devices()) {
    INFO("device ", d.device.str());
    const std::string name = d.device.str();
    reference.to(d.device);
    save_parameters(dir / (name + ".safetensors"), reference);
    CHECK(read_bytes(dir / (name + ".safetensors")) == model_bytes);
    reference.to(Device::cpu());
    save_parameters(dir / (name + "_back.safetensors"), reference);
    CHECK(read_bytes(dir / (name + "_back.safetensors")) == model_bytes);

    // Another model, moved first, resumes the CPU's training state on the device and saves it unchanged.
    GPT resumed = tiny_gpt(5);
    resumed.to(d.device);
    nn::AdamW optimizer(resumed.parameters());
    const TrainState loaded = load_train_state(dir / "cpu_state.safetensors", resumed, optimizer);
    CHECK(resumed.device() == d.device);
    for (const auto& moment : optimizer.state()) CHECK(moment.device() == d.device);
    save_train_state(dir / (name + "_state.safetensors"), resumed, optimizer, loaded);
    CHECK(read_bytes(dir / (name + "_state.safetensors")) == state_bytes);
  }
}

TEST_CASE("cli: --device names a device (else status 2); --tf32 is for CUDA") {
  TempDir dir;
  write_text(dir / "text.txt");
  for (const std::string bad : {"gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"}) {
    const auto r = run_ellipse({"train", "gpt", "--text", dir / "text.txt", "--out", dir / "run", "--device", bad});
    INFO("--device ", bad, ": ", r.err);
    CHECK(r.status == 2);
    CHECK(r.err.find("--device") != std::string::npos);
  }
  const auto tf32 = run_ellipse({"bench", "--device", "cpu", "--tf32", "--steps", "1"});
  CHECK(tf32.status == 1);
  CHECK(tf32.err.find("tf32: device cpu") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "run"));
}

TEST_CASE("cli: --device cuda trains like the CPU where CUDA works, and fails cleanly, touching nothing, where not") {
  TempDir dir;
  write_text(dir / "text.txt");
  const testing::TestDevice cuda = cuda_entry();
  if (!cuda.skip_reason.empty()) {
    MESSAGE("CUDA is unavailable (", cuda.skip_reason, "): checking that every --device cuda fails with status 1");
    const std::string model = dir.str();  // any existing directory: the device is checked before it is read
    const std::vector<std::vector<std::string>> commands{
        {"train", "gpt", "--text", dir / "text.txt", "--out", dir / "out"},
        {"train", "vit", "--data", dir.str(), "--out", dir / "out"},
        {"eval", "gpt", "--model", model, "--text", dir / "text.txt"},
        {"eval", "vit", "--model", model, "--data", dir.str()},
        {"sample", "--model", model, "--prompt", "a"},
        {"inspect", "--model", model, "--text", "a cab", "--out", dir / "out"},
        {"study", "gpt", "--preset", "smoke", "--data", dir / "text.txt", "--out", dir / "out"},
        {"study", "vit", "--data", dir.str(), "--out", dir / "out"},
        {"bench", "--config", "gpt-s", "--steps", "1"}};
    for (auto args : commands) {
      args.insert(args.end(), {"--device", "cuda"});
      const auto r = run_ellipse(args);
      INFO("ellipse ", args[0], " ", args[1], ": status ", r.status, ", stderr: ", r.err);
      CHECK(r.status == 1);
      CHECK(r.err.find("cuda:0") != std::string::npos);
      CHECK(r.out.empty());
      CHECK_FALSE(fs::exists(dir / "out"));
    }
    return;
  }

  MESSAGE("CUDA is available: comparing 2 training steps on cuda:0 with the CPU's");
  std::vector<nlohmann::json> evals;
  for (const std::string device : {"cpu", "cuda"}) {
    const auto r = run_ellipse({"train", "gpt", "--text", dir / "text.txt", "--config", "gpt-tiny", "--attn",
                                "elliptical", "--steps", "2", "--eval-every", "2", "--json", "--out", dir / device,
                                "--device", device});
    INFO(device, ": ", r.err);
    REQUIRE(r.status == 0);
    const auto lines = json_lines(r.out);
    REQUIRE(lines.size() == 1);
    evals.push_back(lines[0]);
  }
  for (const char* key : {"train_loss", "val_loss"}) {
    const double cpu = evals[0][key].get<double>(), gpu = evals[1][key].get<double>();
    INFO(key, ": cpu ", cpu, ", cuda ", gpu);
    CHECK(std::abs(gpu - cpu) <= 1e-4 * std::abs(cpu));
  }
  const auto bench = run_ellipse({"bench", "--config", "gpt-s", "--attn", "standard", "--steps", "2", "--warmup",
                                  "1", "--device", "cuda"});
  INFO("bench: ", bench.err);
  REQUIRE(bench.status == 0);
  const auto line = json_lines(bench.out).at(0);
  CHECK(line["device"] == "cuda:0");
  CHECK(line["peak_gpu_mib"].get<double>() > 0);
}
