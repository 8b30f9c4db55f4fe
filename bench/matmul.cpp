// Times f32 matrix products through the library's `matmul`.
//
//   bench_matmul                   a 1024x1024x1024 product against a direct cblas_sgemm call on the same
//                                  buffers; one JSON line (CI reads its ellipse_gflops)
//   bench_matmul --shapes CONFIG   every distinct product of one training step of gpt-s, vit-s or gpt-m (at
//                                  batch 8), one JSON line each, then the step's total
//
// The step's products are derived from the presets, with the operand layouts that the library's ops pass:
// "row" is a row-major operand, "col" a transposed view of a row-major one. bench/torch_matmul.py times the
// same lines with torch.mm, bench/compare_matmul.sh puts the two side by side.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "ellipse.hpp"

namespace {
using namespace ellipse;

template <class F>
double time_ms(F& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> times) {
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

template <class F>
double median_ms(int repeats, F&& f) {
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) times.push_back(time_ms(f));
  return median(std::move(times));
}

int compare_with_cblas() {
  constexpr std::int64_t n = 1024;
  constexpr int kRepeats = 15;
  Generator gen(0);
  const Tensor a = randn({n, n}, gen), b = randn({n, n}, gen);
  Tensor c = empty({n, n});
  auto direct = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(), n,
                0.0f, c.data<float>(), n);
  };
  auto library = [&] { c = matmul(a, b); };
  direct();
  library();  // warm-up: thread pools and page faults
  // Alternate the two so that both see the same machine state.
  double direct_ms = 0, library_ms = 0;
  for (int round = 0; round < 3; ++round) {
    direct_ms += median_ms(kRepeats, direct);
    library_ms += median_ms(kRepeats, library);
  }
  direct_ms /= 3;
  library_ms /= 3;
  const double gflop = 2.0 * n * n * n / 1e9;
  std::printf("{\"bench\": \"matmul\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"cblas_sgemm_ms\": %.3f, "
              "\"ellipse_matmul_ms\": %.3f, \"ratio\": %.3f, \"cblas_gflops\": %.1f, \"ellipse_gflops\": %.1f}\n",
              static_cast<long long>(n), static_cast<long long>(n), static_cast<long long>(n), direct_ms, library_ms,
              library_ms / direct_ms, gflop / direct_ms * 1e3, gflop / library_ms * 1e3);
  return 0;
}

enum class Layout { row, col };

const char* layout_name(Layout layout) { return layout == Layout::row ? "row" : "col"; }

// `batch` products of [m, k] @ [k, n], occurring `count` times in a step.
struct Product {
  std::string name;
  std::int64_t m, n, k, batch;
  Layout a, b;
  std::int64_t count;

  double flops() const { return 2.0 * static_cast<double>(m * n * k * batch); }
};

struct StepProducts {
  std::string config;
  std::vector<Product> products;
  double model_flops;  // gpt_step_flops or vit_step_flops: what the shapes must add up to
};

// A product with the shape and layouts of an earlier one is the same GEMM: it joins that entry (timed once).
void add(std::vector<Product>& products, Product product) {
  for (Product& seen : products) {
    if (seen.m == product.m && seen.n == product.n && seen.k == product.k && seen.batch == product.batch &&
        seen.a == product.a && seen.b == product.b) {
      seen.name += " + " + product.name;
      seen.count += product.count;
      return;
    }
  }
  products.push_back(std::move(product));
}

// linear(): x W^T over `rows` rows (W [out, in], W^T a transposed view); backward g W and g^T x. The step
// adds the bias inside the forward GEMM; here, as for torch.mm, it is the bare product.
void add_linear(std::vector<Product>& products, const std::string& name, std::int64_t rows, std::int64_t in,
                std::int64_t out, std::int64_t count, bool input_grad = true) {
  add(products, {name + " forward", rows, out, in, 1, Layout::row, Layout::col, count});
  if (input_grad) add(products, {name + " input grad", rows, in, out, 1, Layout::row, Layout::row, count});
  add(products, {name + " weight grad", out, in, rows, 1, Layout::col, Layout::row, count});
}

// An unbiased Linear goes through matmul(x, W^T), whose backward gives W^T's gradient x^T g [in, out] instead.
void add_unbiased_head(std::vector<Product>& products, std::int64_t rows, std::int64_t in, std::int64_t out) {
  add(products, {"head forward", rows, out, in, 1, Layout::row, Layout::col, 1});
  add(products, {"head input grad", rows, in, out, 1, Layout::row, Layout::row, 1});
  add(products, {"head weight grad", in, out, rows, 1, Layout::col, Layout::row, 1});
}

// nn::Attention's explicit path, one product per (batch item, head): scores q k^T, output probs v; matmul's
// backward of a @ b is g b^T for a and a^T g for b. The full N x N scores are computed, causal or not.
void add_attention(std::vector<Product>& products, std::int64_t batch_heads, std::int64_t n, std::int64_t head_dim,
                   std::int64_t count) {
  add(products, {"attention scores", n, n, head_dim, batch_heads, Layout::row, Layout::col, count});
  add(products, {"attention probs @ v", n, head_dim, n, batch_heads, Layout::row, Layout::row, count});
  add(products, {"q grad", n, head_dim, n, batch_heads, Layout::row, Layout::row, count});
  add(products, {"k^T grad", head_dim, n, n, batch_heads, Layout::col, Layout::row, count});
  add(products, {"probs grad", n, n, head_dim, batch_heads, Layout::row, Layout::col, count});
  add(products, {"v grad", n, head_dim, n, batch_heads, Layout::col, Layout::row, count});
}

constexpr std::int64_t kMlpRatio = 4;  // as GPT and ViT build their blocks

void add_blocks(std::vector<Product>& products, std::int64_t n_layer, std::int64_t batch, std::int64_t tokens,
                std::int64_t d, std::int64_t heads) {
  const std::int64_t rows = batch * tokens;
  add_linear(products, "qkv", rows, d, 3 * d, n_layer);
  add_attention(products, batch * heads, tokens, d / heads, n_layer);
  add_linear(products, "proj", rows, d, d, n_layer);
  add_linear(products, "fc1", rows, d, kMlpRatio * d, n_layer);
  add_linear(products, "fc2", rows, kMlpRatio * d, d, n_layer);
}

StepProducts gpt_step(std::string_view name, std::optional<std::int64_t> batch = std::nullopt) {
  constexpr std::int64_t kVocab = 65;  // Tiny Shakespeare's, as `ellipse bench` uses
  GPTConfig config = gpt_preset(name, kVocab);
  config.batch = batch.value_or(config.batch);
  StepProducts step{config.name, {}, gpt_step_flops(config)};
  add_blocks(step.products, config.n_layer, config.batch, config.seq_len, config.d_model, config.n_head);
  add_unbiased_head(step.products, config.batch * config.seq_len, config.d_model, config.vocab);
  return step;
}

StepProducts vit_step(std::string_view name) {
  const ViTConfig config = vit_preset(name);
  StepProducts step{config.name, {}, vit_step_flops(config)};
  const std::int64_t patches = config.patches_per_side() * config.patches_per_side();
  // The images need no gradient, so the patch embedding has no input grad.
  add_linear(step.products, "patch_emb", config.batch * patches, config.patch * config.patch, config.d_model, 1,
             /*input_grad=*/false);
  add_blocks(step.products, config.n_layer, config.batch, config.tokens(), config.d_model, config.n_head);
  add_unbiased_head(step.products, config.batch, config.d_model, config.classes);  // the class token only
  return step;
}

// A rows x cols operand (batched when batch > 1) of the given layout: "col" transposes a [cols, rows] tensor.
Tensor operand(std::int64_t batch, std::int64_t rows, std::int64_t cols, Layout layout, Generator& gen) {
  const bool transposed = layout == Layout::col;
  Shape shape{transposed ? cols : rows, transposed ? rows : cols};
  if (batch > 1) shape.insert(shape.begin(), batch);
  const Tensor t = randn(shape, gen);
  return transposed ? transpose(t, -1, -2) : t;
}

// Small products take microseconds: repeat until the samples add up to a stable median.
template <class F>
double median_ms_of_product(F&& f) {
  constexpr std::size_t kWarmup = 2, kMinRepeats = 10, kMaxRepeats = 1000;
  constexpr double kMinTotalMs = 100;
  for (std::size_t i = 0; i < kWarmup; ++i) f();
  std::vector<double> times;
  double total_ms = 0;
  while (times.size() < kMinRepeats || (total_ms < kMinTotalMs && times.size() < kMaxRepeats)) {
    times.push_back(time_ms(f));
    total_ms += times.back();
  }
  return median(std::move(times));
}

int time_step_products(const StepProducts& step) {
  Generator gen(0);
  double step_ms = 0, step_flops = 0;
  for (const Product& p : step.products) {
    const Tensor a = operand(p.batch, p.m, p.k, p.a, gen), b = operand(p.batch, p.k, p.n, p.b, gen);
    Tensor c;
    const double ms = median_ms_of_product([&] { c = matmul(a, b); });
    step_ms += static_cast<double>(p.count) * ms;
    step_flops += static_cast<double>(p.count) * p.flops();
    std::printf("{\"config\": \"%s\", \"impl\": \"ellipse\", \"name\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, "
                "\"batch\": %lld, \"a_layout\": \"%s\", \"b_layout\": \"%s\", \"count\": %lld, \"ms\": %.4f, "
                "\"gflops\": %.1f}\n",
                step.config.c_str(), p.name.c_str(), static_cast<long long>(p.m), static_cast<long long>(p.n),
                static_cast<long long>(p.k), static_cast<long long>(p.batch), layout_name(p.a), layout_name(p.b),
                static_cast<long long>(p.count), ms, p.flops() / ms / 1e6);
    std::fflush(stdout);
  }
  std::printf("{\"config\": \"%s\", \"impl\": \"ellipse\", \"name\": \"step total\", \"step_ms\": %.3f, "
              "\"step_gflop\": %.4f, \"model_gflop\": %.4f, \"gflops\": %.1f}\n",
              step.config.c_str(), step_ms, step_flops / 1e9, step.model_flops / 1e9, step_flops / step_ms / 1e6);
  return 0;
}

int usage(const char* program) {
  std::fprintf(stderr, "usage: %s [--shapes gpt-s|vit-s|gpt-m]\n", program);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 1) return compare_with_cblas();
  if (argc != 3 || std::strcmp(argv[1], "--shapes") != 0) return usage(argv[0]);
  const std::string_view config = argv[2];
  constexpr std::int64_t kGptMBatch = 8;  // 2048 tokens, as compare_torch.sh runs gpt-m
  if (config == "gpt-s") return time_step_products(gpt_step(config));
  if (config == "gpt-m") return time_step_products(gpt_step(config, kGptMBatch));
  if (config == "vit-s") return time_step_products(vit_step(config));
  return usage(argv[0]);
}
