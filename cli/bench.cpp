// `ellipse bench`: times one training step (zero grads, forward, cross-entropy, backward, AdamW) of a
// benchmark model (gpt-s, gpt-m, vit-s, vit-xs) on random data and prints one JSON line per configuration.
// On a GPU each step is timed to the end of its last kernel, and the line adds the device's peak memory.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <fmt/format.h>

#include "backends/backend.hpp"
#include "cli/commands.hpp"
#include "ellipse.hpp"
#include "models/gpt.hpp"
#include "models/vit.hpp"

namespace ellipse::cli {

namespace {

struct BenchFlags {
  std::string config = "gpt-s", attn = "both";
  Device device;
  bool tf32 = false;
  std::int64_t steps = 20, warmup = 3, batch = 0;
  std::uint64_t seed = 0;
};

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// The device's f32 GEMM rate in GFLOP/s: the fastest of a few 1024^3 products through matmul.
double gemm_gflops(Device device) {
  constexpr std::int64_t n = 1024;
  Backend& backend = backend_for(device);
  Generator gen(0);
  const Tensor a = randn({n, n}, gen, DType::f32, device), b = randn({n, n}, gen, DType::f32, device);
  matmul(a, b);  // warm-up
  double best = 0;
  for (int i = 0; i < 10; ++i) {
    backend.synchronize();
    const auto start = std::chrono::steady_clock::now();
    matmul(a, b);
    backend.synchronize();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, 2.0 * n * n * n / seconds / 1e9);
  }
  return best;
}

// Times `step` (one training step returning its loss) and prints the JSON line of the configuration.
void time_steps(const BenchFlags& flags, std::string_view config, std::string attention, const nn::Module& model,
                std::int64_t items_per_step, double step_flops, const std::function<double()>& step) {
  Backend& backend = backend_for(flags.device);
  // Kernels may still run when a step returns: wait for them before each reading of the clock.
  auto now = [&] {
    backend.synchronize();
    return std::chrono::steady_clock::now();
  };
  std::vector<double> times;
  double loss_value = 0;
  for (std::int64_t i = 0; i < flags.warmup + flags.steps; ++i) {
    if (i == flags.warmup) backend.reset_peak_memory();  // the peak of the timed steps only
    const auto start = now();
    loss_value = step();
    const double ms = std::chrono::duration<double, std::milli>(now() - start).count();
    if (i >= flags.warmup) times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  // The CPU's memory is the process's peak RSS; a GPU's is what its backend counted for tensors. Both are read
  // before the GEMM timing below allocates anything.
  const double rss_mib = peak_rss_mib();
  const std::string device_memory =
      flags.device.is_cpu() ? ""
                            : fmt::format(", \"tf32\": {}, \"peak_gpu_mib\": {:.1f}", flags.tf32,
                                          static_cast<double>(backend.peak_memory_bytes()) / (1024.0 * 1024.0));
  const double gemm_rate = gemm_gflops(flags.device);
  // step_gflop counts the step's matrix products (gpt_step_flops, vit_step_flops) and gflops is that over the
  // median step. floor_ms is the step's GEMM floor: those FLOPs at this device's own 1024^3 GEMM rate
  // (gemm_gflops); bench/compare_torch.sh takes the better of that and PyTorch's rate instead.
  const double floor_ms = step_flops / gemm_rate / 1e6;
  fmt::print("{{\"config\": \"{}\", \"attn\": \"{}\", \"device\": \"{}\", \"params\": {}, \"step_ms\": {:.2f}, "
             "\"step_ms_min\": {:.2f}, \"items_per_s\": {:.0f}, \"step_gflop\": {:.6g}, \"gflops\": {:.1f}, "
             "\"gemm_gflops\": {:.1f}, \"floor_ms\": {:.6g}, \"floor_ratio\": {:.3f}, \"loss\": {:.4f}, "
             "\"peak_rss_mib\": {:.1f}{}}}\n",
             config, attention, flags.device.str(), model.parameter_count(), median, times[0],
             static_cast<double>(items_per_step) / median * 1e3, step_flops / 1e9, step_flops / median / 1e6,
             gemm_rate, floor_ms, median / floor_ms, loss_value, rss_mib, device_memory);
  std::fflush(stdout);
}

// One step: zero grads, forward, cross-entropy, backward, AdamW.
double train_step(nn::AdamW& optimizer, const std::function<Tensor()>& forward, const Tensor& targets) {
  optimizer.zero_grad();
  const Tensor loss = cross_entropy(forward(), targets);
  loss.backward();
  optimizer.step();
  return loss.item();
}

constexpr nn::AdamWOptions kBenchAdamW{.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.99, .weight_decay = 0.1};

void bench_gpt(const BenchFlags& flags, std::string attention) {
  constexpr std::int64_t kVocab = 65;  // Tiny Shakespeare's character count: the parameter counts of the issues
  GPTConfig config = gpt_preset(flags.config, kVocab);
  config.attention = attention;
  if (flags.batch > 0) config.batch = flags.batch;
  GPT model(config, flags.seed);
  model.to(flags.device);
  nn::AdamW optimizer(model.parameters(), kBenchAdamW);
  Generator gen(flags.seed + 1);
  const Tensor inputs = randint({config.batch, config.seq_len}, kVocab, gen, flags.device);
  const Tensor targets = randint({config.batch, config.seq_len}, kVocab, gen, flags.device);
  time_steps(flags, config.name, attention, model, config.batch * config.seq_len, gpt_step_flops(config),
             [&] { return train_step(optimizer, [&] { return model.forward(inputs); }, targets); });
}

void bench_vit(const BenchFlags& flags, std::string attention) {
  ViTConfig config = vit_preset(flags.config);
  config.attention = attention;
  if (flags.batch > 0) config.batch = flags.batch;
  ViT model(config, flags.seed);
  model.to(flags.device);
  nn::AdamW optimizer(model.parameters(), kBenchAdamW);
  Generator gen(flags.seed + 1);
  const Tensor images = uniform({config.batch, config.image, config.image}, 0, 1, gen, DType::f32, flags.device);
  const Tensor targets = randint({config.batch}, config.classes, gen, flags.device);
  time_steps(flags, config.name, attention, model, config.batch, vit_step_flops(config),
             [&] { return train_step(optimizer, [&] { return model.forward(images); }, targets); });
}

int run_bench(const BenchFlags& flags) {
  use_device(flags.device, flags.tf32);
  const bool vit = flags.config.starts_with("vit");
  for (const std::string attention : {"standard", "elliptical"}) {
    if (flags.attn != "both" && flags.attn != attention) continue;
    vit ? bench_vit(flags, attention) : bench_gpt(flags, attention);
  }
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, Action& action) {
  auto flags = std::make_shared<BenchFlags>();
  auto* b = app.add_subcommand("bench", "Time training steps of a benchmark model; one JSON line per configuration");
  b->add_option("--config", flags->config, "Benchmark model")->check(CLI::IsMember({"gpt-s", "gpt-m", "vit-s", "vit-xs"}))
      ->capture_default_str();
  b->add_option("--attn", flags->attn, "Attention")->check(CLI::IsMember({"standard", "elliptical", "both"}))
      ->capture_default_str();
  add_device_option(*b, flags->device);
  add_tf32_flag(*b, flags->tf32);
  b->add_option("--steps", flags->steps, "Timed steps")->check(CLI::Range(std::int64_t{1}, std::int64_t{100000}))
      ->capture_default_str();
  b->add_option("--warmup", flags->warmup, "Untimed steps first")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{100000}))->capture_default_str();
  b->add_option("--batch", flags->batch, "Batch size (default: the config's)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{65536}));
  b->add_option("--seed", flags->seed, "Random seed")->check(CLI::NonNegativeNumber)->capture_default_str();
  b->callback([&action, flags] { action = [flags] { return run_bench(*flags); }; });
}

}  // namespace ellipse::cli
