// The study tools (docs/study.md): token_collapse and head_redundancy against plain loops, BlockProbe's
// per-layer averages on a tiny ViT and a causal GPT, `ellipse inspect` on a ViT and a GPT checkpoint, and
// `ellipse study vit --preset quick` end to end on synthetic Fashion-MNIST files.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cli_runner.hpp"
#include "core/io/npy.hpp"
#include "fashion_fixture.hpp"
#include "figure_checks.hpp"
#include "helpers.hpp"
#include "models/checkpoint.hpp"
#include "models/fashion_mnist.hpp"
#include "models/gpt.hpp"
#include "models/vit.hpp"
#include "nn/analysis.hpp"
#include "study_fixture.hpp"

using namespace ellipse;
using namespace ellipse::testing;  // TempDir, the synthetic data set, run_ellipse
namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

using Vec = std::vector<double>;

// ---- plain-loop references ------------------------------------------------------------------------------

// x [b, n, d] row-major: the mean over the batch of the mean cosine over pairs i < j (0 when either is zero).
double reference_collapse(const Vec& x, std::int64_t b, std::int64_t n, std::int64_t d) {
  auto at = [&](std::int64_t item, std::int64_t token, std::int64_t c) {
    return x[static_cast<std::size_t>((item * n + token) * d + c)];
  };
  double total = 0;
  for (std::int64_t item = 0; item < b; ++item) {
    double pairs = 0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = i + 1; j < n; ++j) {
        double dot = 0, ni = 0, nj = 0;
        for (std::int64_t c = 0; c < d; ++c) {
          dot += at(item, i, c) * at(item, j, c);
          ni += at(item, i, c) * at(item, i, c);
          nj += at(item, j, c) * at(item, j, c);
        }
        pairs += ni == 0 || nj == 0 ? 0.0 : dot / (std::sqrt(ni) * std::sqrt(nj));
      }
    total += pairs / static_cast<double>(n * (n - 1) / 2);
  }
  return total / static_cast<double>(b);
}

// a [b, h, n*m] row-major: the mean over the batch and head pairs p < q of the L2 distance of their maps.
double reference_redundancy(const Vec& a, std::int64_t b, std::int64_t h, std::int64_t size) {
  double total = 0;
  for (std::int64_t item = 0; item < b; ++item) {
    double pairs = 0;
    for (std::int64_t p = 0; p < h; ++p)
      for (std::int64_t q = p + 1; q < h; ++q) {
        double squares = 0;
        for (std::int64_t k = 0; k < size; ++k) {
          const double diff = a[static_cast<std::size_t>((item * h + p) * size + k)] -
                              a[static_cast<std::size_t>((item * h + q) * size + k)];
          squares += diff * diff;
        }
        pairs += std::sqrt(squares);
      }
    total += pairs / static_cast<double>(h * (h - 1) / 2);
  }
  return total / static_cast<double>(b);
}

Vec as_doubles(const Tensor& t) { return to_dtype(t, DType::f64).to_vector<double>(); }

Tensor f64(const Vec& values, const Shape& shape) { return from_vector(values, shape); }

// ---- PNG and file helpers -------------------------------------------------------------------------------

// Width and height from a PNG's IHDR chunk; fails the test when the signature or IHDR is missing.
std::pair<std::uint32_t, std::uint32_t> png_size(const std::string& path) {
  const std::string bytes = read_bytes(path);
  REQUIRE_MESSAGE(bytes.size() >= 24, path);
  REQUIRE_MESSAGE(bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0, path);
  REQUIRE_MESSAGE(bytes.compare(12, 4, "IHDR") == 0, path);
  auto be32 = [&](std::size_t at) {
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<std::uint8_t>(bytes[at + i]);
    return v;
  };
  return {be32(16), be32(20)};
}

std::vector<nn::Block*> blocks_of(auto& model, std::int64_t layers) {
  std::vector<nn::Block*> blocks;
  for (std::int64_t l = 0; l < layers; ++l) blocks.push_back(&model.block(static_cast<std::size_t>(l)));
  return blocks;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// token_collapse

TEST_CASE("token_collapse: identical tokens 1, orthogonal 0, opposite -1; a zero token is orthogonal") {
  // Two batch items of four identical tokens each (different directions per item).
  CHECK(nn::token_collapse(f64({1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, -1, .5, 2, -1, .5, 2, -1, .5, 2, -1, .5, 2},
                               {2, 4, 3})) == doctest::Approx(1).epsilon(1e-12));
  CHECK(std::abs(nn::token_collapse(f64({1, 0, 0, 0, 2, 0, 0, 0, 3}, {1, 3, 3}))) < 1e-15);
  CHECK(nn::token_collapse(f64({1, -2, 3, -1, 2, -3}, {1, 2, 3})) == doctest::Approx(-1).epsilon(1e-12));
  // Pairs (0, 1) cosine 1, (0, 2) and (1, 2) with the zero token 0: mean 1/3, not NaN.
  CHECK(nn::token_collapse(f64({1, 0, 2, 0, 0, 0}, {1, 3, 2})) == doctest::Approx(1.0 / 3).epsilon(1e-12));
  CHECK(nn::token_collapse(zeros({2, 3, 4})) == 0.0);
  // f32 input gives the same answer (the function works in f64 inside).
  CHECK(nn::token_collapse(reshape(tensor({1, -2, 3, -1, 2, -3}), {1, 2, 3})) == doctest::Approx(-1).epsilon(1e-12));
}

TEST_CASE("token_collapse: random input equals a loop over pairs; each token's scale does not matter") {
  Generator gen(7);
  const Tensor x = randn({3, 5, 4}, gen, DType::f64);
  const double expected = reference_collapse(as_doubles(x), 3, 5, 4);
  CHECK(std::abs(nn::token_collapse(x) - expected) < 1e-12);

  const Tensor x32 = randn({2, 6, 7}, gen, DType::f32);
  CHECK(std::abs(nn::token_collapse(x32) - reference_collapse(as_doubles(x32), 2, 6, 7)) < 1e-6);

  // Positive factors from 1e-3 to 1e3, one per token, leave every cosine as it was.
  const Tensor scales = exp(uniform({3, 5, 1}, -7.0, 7.0, gen, DType::f64));
  CHECK(std::abs(nn::token_collapse(mul(x, scales)) - expected) < 1e-12);
  // A strided (transposed) input is read by its logical layout.
  const Tensor xt = transpose(randn({3, 4, 5}, gen, DType::f64), 1, 2);
  CHECK(std::abs(nn::token_collapse(xt) - reference_collapse(as_doubles(contiguous(xt)), 3, 5, 4)) < 1e-12);
}

TEST_CASE("token_collapse: bad shapes name the function and the shape") {
  CHECK_ERROR(nn::token_collapse(zeros({2, 1, 4})), "token_collapse", "N >= 2", "[2, 1, 4]");
  CHECK_ERROR(nn::token_collapse(zeros({4, 3})), "token_collapse", "[4, 3]");
  CHECK_ERROR(nn::token_collapse(zeros({1, 2, 3, 4})), "token_collapse", "[1, 2, 3, 4]");
  CHECK_ERROR(nn::token_collapse(Tensor{}), "token_collapse", "undefined");
  CHECK_ERROR(nn::token_collapse(zeros({0, 3, 4})), "token_collapse", "[0, 3, 4]");  // no input to average over
}

// ---------------------------------------------------------------------------------------------------
// head_redundancy

TEST_CASE("head_redundancy: identical heads 0; known maps give their exact L2 distance") {
  Generator gen(3);
  const Tensor one = softmax(randn({2, 1, 4, 5}, gen, DType::f64), -1);
  CHECK(nn::head_redundancy(concat({one, one, one}, 1)) == 0.0);
  // Item 0: a permutation and its swap, distance sqrt(4) = 2; item 1: distance sqrt(0.25 + 0.25).
  const Tensor two = f64({1, 0, 0, 1, 0, 1, 1, 0, .5, .5, .5, .5, 1, 0, .5, .5}, {2, 2, 2, 2});
  CHECK(nn::head_redundancy(two) == doctest::Approx((2 + std::sqrt(0.5)) / 2).epsilon(1e-14));
  // Three heads at (0, 0), (3, 0) and (0, 4): distances 3, 4 and 5, mean 4.
  CHECK(nn::head_redundancy(f64({0, 0, 3, 0, 0, 4}, {1, 3, 1, 2})) == doctest::Approx(4).epsilon(1e-14));
  // Nearly equal heads keep their small distance: one entry of a 50x50 map of 0.5 moved by 1e-7. (Expanding
  // |a - b|^2 as |a|^2 + |b|^2 - 2ab would lose it to rounding at the scale of |a|^2 = 625.)
  std::vector<double> maps(2 * 2500, 0.5);
  maps[2500 + 1234] += 1e-7;
  CHECK(std::abs(nn::head_redundancy(f64(maps, {1, 2, 50, 50})) - 1e-7) < 1e-13);
}

TEST_CASE("head_redundancy: random maps equal a loop over head pairs; errors name the function") {
  Generator gen(5);
  const Tensor a = softmax(randn({3, 4, 5, 6}, gen, DType::f64), -1);
  CHECK(std::abs(nn::head_redundancy(a) - reference_redundancy(as_doubles(a), 3, 4, 30)) < 1e-12);
  const Tensor a32 = softmax(randn({2, 3, 7, 7}, gen, DType::f32), -1);
  CHECK(std::abs(nn::head_redundancy(a32) - reference_redundancy(as_doubles(a32), 2, 3, 49)) < 1e-6);
  // Causal maps are not square: [B, H, N, M].
  const Tensor wide = uniform({2, 2, 3, 8}, 0.0, 1.0, gen, DType::f64);
  CHECK(std::abs(nn::head_redundancy(wide) - reference_redundancy(as_doubles(wide), 2, 2, 24)) < 1e-12);

  CHECK_ERROR(nn::head_redundancy(zeros({2, 1, 3, 3})), "head_redundancy", "H >= 2", "[2, 1, 3, 3]");
  CHECK_ERROR(nn::head_redundancy(zeros({2, 3, 3})), "head_redundancy", "[2, 3, 3]");
  CHECK_ERROR(nn::head_redundancy(Tensor{}), "head_redundancy", "undefined");
  CHECK_ERROR(nn::head_redundancy(zeros({0, 2, 3, 3})), "head_redundancy", "[0, 2, 3, 3]");
}

// ---------------------------------------------------------------------------------------------------
// BlockProbe

namespace {

// What one forward pass shows through the blocks' hooks, computed directly from the kept tensors.
struct PassValues {
  std::int64_t batch = 0;
  Vec collapse_attn, collapse_block, redundancy;
  std::vector<std::vector<Vec>> metric;  // [layer][head][coordinate], the mean over items and query rows
};

PassValues pass_values(const std::vector<nn::Block*>& blocks) {
  PassValues v;
  for (const nn::Block* block : blocks) {
    v.batch = block->last_output().shape()[0];
    v.collapse_attn.push_back(nn::token_collapse(block->last_attention_output()));
    v.collapse_block.push_back(nn::token_collapse(block->last_output()));
    v.redundancy.push_back(nn::head_redundancy(block->attention().last_attention()));
    std::vector<Vec> layer;
    if (const Tensor& metric = block->attention().last_metric(); metric.defined()) {
      const Shape& s = metric.shape();  // [B, H, rows, dh]
      const Vec m = as_doubles(metric);
      layer.assign(static_cast<std::size_t>(s[1]), Vec(static_cast<std::size_t>(s[3]), 0.0));
      for (std::int64_t b = 0; b < s[0]; ++b)
        for (std::int64_t h = 0; h < s[1]; ++h)
          for (std::int64_t r = 0; r < s[2]; ++r)
            for (std::int64_t c = 0; c < s[3]; ++c)
              layer[static_cast<std::size_t>(h)][static_cast<std::size_t>(c)] +=
                  m[static_cast<std::size_t>(((b * s[1] + h) * s[2] + r) * s[3] + c)] / static_cast<double>(s[0] * s[2]);
    }
    v.metric.push_back(std::move(layer));
  }
  return v;
}

// The batch-size-weighted average of the passes, against what the probe reports.
void check_average(const nn::LayerStudy& got, const std::vector<PassValues>& passes) {
  std::int64_t items = 0;
  for (const auto& p : passes) items += p.batch;
  const std::size_t layers = passes.front().collapse_attn.size();
  REQUIRE(got.collapse_attn.size() == layers);
  REQUIRE(got.collapse_block.size() == layers);
  REQUIRE(got.head_redundancy.size() == layers);
  REQUIRE(got.mean_metric.size() == layers);
  auto average = [&](auto&& field) {
    double total = 0;
    for (const auto& p : passes) total += static_cast<double>(p.batch) * field(p);
    return total / static_cast<double>(items);
  };
  for (std::size_t l = 0; l < layers; ++l) {
    CAPTURE(l);
    CHECK(got.collapse_attn[l] == doctest::Approx(average([&](const PassValues& p) { return p.collapse_attn[l]; })).epsilon(1e-12));
    CHECK(got.collapse_block[l] == doctest::Approx(average([&](const PassValues& p) { return p.collapse_block[l]; })).epsilon(1e-12));
    CHECK(got.head_redundancy[l] == doctest::Approx(average([&](const PassValues& p) { return p.redundancy[l]; })).epsilon(1e-12));
    const auto& expected_layer = passes.front().metric[l];
    REQUIRE(got.mean_metric[l].size() == expected_layer.size());
    for (std::size_t h = 0; h < expected_layer.size(); ++h) {
      REQUIRE(got.mean_metric[l][h].size() == expected_layer[h].size());
      for (std::size_t c = 0; c < expected_layer[h].size(); ++c)
        CHECK(got.mean_metric[l][h][c] ==
              doctest::Approx(average([&](const PassValues& p) { return p.metric[l][h][c]; })).epsilon(1e-9));
    }
  }
}

}  // namespace

TEST_CASE("BlockProbe on a ViT: batch-weighted averages of what the hooks keep; m per layer, head, coordinate") {
  ViTConfig config;
  config.name = "probe";
  config.image = 8;
  config.patch = 4;
  config.n_layer = 3;
  config.d_model = 16;
  config.n_head = 2;
  config.attention = "elliptical";
  ViT model(config, 4);
  const auto blocks = blocks_of(model, config.n_layer);
  NoGradGuard no_grad;
  Generator gen(9);
  {
    nn::BlockProbe probe(blocks);
    CHECK_ERROR(probe.result(), "BlockProbe::result", "no forward pass");
    CHECK_ERROR(probe.collect(), "BlockProbe::collect", "layer 0");  // nothing ran yet
    std::vector<PassValues> passes;
    for (const std::int64_t batch : {3, 5}) {
      model.forward(uniform({batch, 8, 8}, 0.0, 1.0, gen));
      const nn::Block& last = *blocks.back();
      CHECK(last.last_output().shape() == Shape{batch, 5, 16});
      CHECK(last.last_attention_output().shape() == Shape{batch, 5, 16});
      CHECK(last.attention().last_attention().shape() == Shape{batch, 2, 5, 5});
      passes.push_back(pass_values(blocks));
      probe.collect();
    }
    const nn::LayerStudy study = probe.result();
    check_average(study, passes);
    // Layer 0 is standard; from layer 1 on, m is [heads][head_dim]. Each input's m has its largest
    // coordinate exactly 1 per head, so the average over inputs lies in [0, 1] with a sum over the
    // coordinates of at least 1 (its largest entry need not be 1).
    CHECK(study.mean_metric[0].empty());
    for (std::size_t l = 1; l < 3; ++l) {
      REQUIRE(study.mean_metric[l].size() == 2);
      for (const auto& head : study.mean_metric[l]) {
        REQUIRE(head.size() == 8);
        double total = 0;
        for (double v : head) {
          CHECK(v >= 0.0);
          CHECK(v <= 1.0);
          total += v;
        }
        CHECK(total >= 1.0 - 1e-9);
      }
      const Tensor m = dynamic_cast<const nn::EllipticalAttention&>(blocks[l]->attention()).last_metric();
      CHECK(m.shape() == Shape{5, 2, 1, 8});
      CHECK(as_doubles(max(m, {-1})) == Vec(10, 1.0));
    }
    // result() leaves the sums alone: asking twice gives the same.
    CHECK(probe.result().collapse_block == study.collapse_block);
  }
  // Once the probe is gone the hooks are off and hold nothing: a later forward keeps nothing, and a new
  // probe cannot collect stale activations from before it existed.
  for (const nn::Block* block : blocks) {
    CHECK_FALSE(block->last_output().defined());
    CHECK_FALSE(block->last_attention_output().defined());
    CHECK_FALSE(block->attention().last_attention().defined());
  }
  model.forward(uniform({2, 8, 8}, 0.0, 1.0, gen));
  CHECK_FALSE(blocks.front()->last_output().defined());
  nn::BlockProbe again(blocks);
  CHECK_ERROR(again.collect(), "BlockProbe::collect", "has not run a forward pass");

  // A standard ViT has no m anywhere.
  config.attention = "standard";
  ViT standard(config, 4);
  const auto standard_blocks = blocks_of(standard, config.n_layer);
  nn::BlockProbe probe(standard_blocks);
  standard.forward(uniform({2, 8, 8}, 0.0, 1.0, gen));
  const PassValues pass = pass_values(standard_blocks);
  probe.collect();
  const nn::LayerStudy study = probe.result();
  check_average(study, {pass});
  for (const auto& layer : study.mean_metric) CHECK(layer.empty());
}

TEST_CASE("BlockProbe on a causal elliptical GPT: m is [B, H, N, dh] and averaged over query rows too") {
  GPTConfig config;
  config.name = "gpt-s";
  config.vocab = 7;
  config.n_layer = 3;
  config.d_model = 16;
  config.n_head = 2;
  config.seq_len = 8;
  config.attention = "elliptical";
  config.metric = nn::MetricMode::causal;
  GPT model(config, 2);
  const auto blocks = blocks_of(model, config.n_layer);
  NoGradGuard no_grad;
  Generator gen(1);
  nn::BlockProbe probe(blocks);
  std::vector<PassValues> passes;
  for (const std::int64_t batch : {2, 1}) {
    model.forward(randint({batch, 6}, 7, gen));
    const auto& attention = dynamic_cast<const nn::EllipticalAttention&>(blocks[1]->attention());
    CHECK(attention.last_metric().shape() == Shape{batch, 2, 6, 8});
    // The kept maps are causal: nothing above the diagonal.
    const Vec probs = as_doubles(blocks[2]->attention().last_attention());
    double above = 0;
    for (std::int64_t r = 0; r < batch * 2; ++r)
      for (std::int64_t i = 0; i < 6; ++i)
        for (std::int64_t j = i + 1; j < 6; ++j) above += std::abs(probs[static_cast<std::size_t>((r * 6 + i) * 6 + j)]);
    CHECK(above == 0.0);
    passes.push_back(pass_values(blocks));
    probe.collect();
  }
  const nn::LayerStudy study = probe.result();
  check_average(study, passes);
  CHECK(study.mean_metric[0].empty());
  CHECK(study.mean_metric[1].size() == 2);
  CHECK(study.mean_metric[2][1].size() == 8);
}

// ---------------------------------------------------------------------------------------------------
// ellipse inspect

namespace {

// A ViT checkpoint for 28x28 inputs written directly (inspect only reads config.json and the weights).
ViTConfig write_vit_checkpoint(const std::string& dir, std::string attention) {
  ViTConfig config;
  config.name = "tiny";
  config.n_layer = 3;
  config.d_model = 16;
  config.n_head = 2;
  config.attention = attention;
  fs::create_directories(dir);
  const ViT model(config, 6);
  save_parameters(dir + "/model.safetensors", model);
  write_bytes(dir + "/config.json", vit_config_json(config));
  return config;
}

}  // namespace

TEST_CASE("cli: inspect a ViT writes the maps, the class token's attention, m and a summary; bad input exits 1") {
  TempDir dir;
  const std::string data = dir / "data";
  write_dataset(data, 8, 12);
  const LabeledImages test = load_fashion_mnist(data, "test");
  const std::int64_t image_index = 5;

  for (const std::string kind : {"standard", "elliptical"}) {
    const bool elliptical = kind == "elliptical";
    CAPTURE(elliptical);
    const std::string model_dir = dir / ("model-" + std::string(kind));
    const std::string out = dir / ("inspect-" + std::string(kind));
    const ViTConfig config = write_vit_checkpoint(model_dir, kind);
    const Run run = run_ellipse({"inspect", "--model", model_dir, "--image", std::to_string(image_index), "--data",
                                 data, "--out", out});
    INFO(run.err);
    REQUIRE(run.status == 0);

    // The same model and image in this process, with the hooks on.
    const auto model = load_vit(model_dir);
    const auto blocks = blocks_of(*model, config.n_layer);
    NoGradGuard no_grad;
    nn::BlockProbe probe(blocks);
    const Vec logits = as_doubles(model->forward(narrow(test.images, 0, image_index, 1)));
    probe.collect();
    const nn::LayerStudy study = probe.result();

    const Tensor maps = io::load_npy(out + "/attention.npy");
    REQUIRE(maps.shape() == Shape{3, 2, 50, 50});
    const Vec written = as_doubles(maps);
    check_rows_sum_to_one(written, 3 * 2 * 50, 50);
    double worst = 0;
    for (std::size_t l = 0; l < 3; ++l) {
      const Vec expected = as_doubles(select(blocks[l]->attention().last_attention(), 0, 0));
      for (std::size_t i = 0; i < expected.size(); ++i)
        worst = std::max(worst, std::abs(expected[i] - written[l * expected.size() + i]));
    }
    CHECK(worst < 1e-6);

    // Each map a panel of 50 x 50 cells of 6 px, coloured from 0 to its largest weight: 2 heads across, 3 layers
    // down, framed by the title, labels and colour bar.
    const figures::Image attention = decode_png(read_bytes(out + "/attention.png"));
    check_panels_drawn(attention, panels_of(maps), {.cell_px = 6, .from_zero = true});
    CHECK(ink_in(attention, 0, 0, attention.width, 20) > 100);  // the title
    // The image at 6 px a pixel, then to its right one 7x7 map per head (the class token's row) scaled to the
    // same 168 px, each from 0 to its largest weight.
    const Tensor pixels = select(test.images, 0, image_index);
    for (int l = 0; l < 3; ++l) {
      CAPTURE(l);
      const figures::Image side = decode_png(read_bytes(out + "/class_attention_layer" + std::to_string(l) + ".png"));
      const auto image_at = find_block(side, figures::render_heatmap(figures::to_grid(pixels),
                                                                     {.map = figures::Colormap::grey, .cell_px = 6}));
      REQUIRE(image_at);
      for (std::int64_t h = 0; h < 2; ++h) {
        const Tensor weights = reshape(narrow(maps.select(0, l).select(0, h).select(0, 0), 0, 1, 49), {7, 7});
        const auto map_at = find_block(side, figures::render_heatmap(figures::to_grid(weights),
                                                                     {.cell_px = 24, .from_zero = true}),
                                       {image_at->first + 168, image_at->second, side.width, image_at->second + 1});
        CHECK(map_at);
      }
    }
    CHECK_FALSE(fs::exists(out + "/class_attention_layer3.png"));
    CHECK(find_block(decode_png(read_bytes(out + "/image.png")),
                     figures::render_heatmap(figures::to_grid(pixels), {.map = figures::Colormap::grey, .cell_px = 8,
                                                                        .range = figures::Range{0, 1}})));

    const Json summary = read_json(out + "/summary.json");
    for (const char* key : {"image", "label", "predicted", "layers", "m"}) CHECK_MESSAGE(summary.contains(key), key);
    CHECK(summary["image"] == image_index);
    const auto label = narrow(test.labels, 0, image_index, 1).item();
    CHECK(summary["label"] == fashion_mnist_class_names()[static_cast<std::size_t>(label)]);
    const auto predicted = std::max_element(logits.begin(), logits.end()) - logits.begin();
    CHECK(summary["predicted"] == fashion_mnist_class_names()[static_cast<std::size_t>(predicted)]);
    for (const auto& [key, values] : {std::pair{"collapse_attn", &study.collapse_attn},
                                      std::pair{"collapse_block", &study.collapse_block},
                                      std::pair{"head_redundancy", &study.head_redundancy}}) {
      CAPTURE(key);
      const auto got = summary["layers"][key].get<Vec>();
      REQUIRE(got.size() == 3);
      for (std::size_t l = 0; l < 3; ++l) CHECK(got[l] == doctest::Approx((*values)[l]).epsilon(1e-6));
    }

    if (elliptical) {
      // metric.json: layers 1 and 2, each [heads][head_dim]; metric.png one strip of 18 px cells per (layer,
      // head), layer-major, one cell per coordinate, with 1 px separators, coloured from 0 to 1.
      const Json metric = read_json(out + "/metric.json");
      REQUIRE(metric.size() == 2);
      std::vector<std::vector<figures::Grid>> strips;
      for (std::size_t i = 0; i < 2; ++i) {
        CHECK(metric[i]["layer"] == i + 1);
        const auto m = metric[i]["m"].get<std::vector<Vec>>();
        REQUIRE(m.size() == 2);
        for (std::size_t h = 0; h < 2; ++h) {
          REQUIRE(m[h].size() == 8);
          for (std::size_t c = 0; c < 8; ++c) CHECK(m[h][c] == doctest::Approx(study.mean_metric[i + 1][h][c]).epsilon(1e-6));
          CHECK(*std::max_element(m[h].begin(), m[h].end()) == 1.0);  // one input: its largest entry is 1
          strips.push_back({{1, 8, std::vector<float>(m[h].begin(), m[h].end())}});
        }
      }
      CHECK(summary["m"] == metric);
      check_panels_drawn(decode_png(read_bytes(out + "/metric.png")), strips,
                         {.cell_px = 18, .separators = true, .range = figures::Range{0, 1}});
    } else {
      CHECK_FALSE(fs::exists(out + "/metric.json"));
      CHECK_FALSE(fs::exists(out + "/metric.png"));
      CHECK(summary["m"].empty());
    }
  }

  const std::string vit = dir / "model-elliptical";
  fs::create_directories(dir / "no-config");
  fs::create_directories(dir / "bert");
  write_bytes(dir / "bert/config.json", R"({"model": "bert"})");
  fs::create_directories(dir / "list");
  write_bytes(dir / "list/config.json", "[1, 2]");
  check_bad({
      {{"inspect", "--model", vit, "--image", "12", "--data", data, "--out", dir / "o1"}, 1,
       {"image 12 is out of range", "12 images"}},
      {{"inspect", "--model", vit, "--text", "abc", "--data", data, "--out", dir / "o2"}, 1, {"holds a ViT", "set image"}},
      {{"inspect", "--model", vit, "--data", data, "--out", dir / "o3"}, 1, {"holds a ViT"}},
      {{"inspect", "--model", vit, "--image", "-1", "--data", data, "--out", dir / "o4"}, 2, {"--image"}},
      {{"inspect", "--model", vit, "--image", "1", "--text", "ab", "--out", dir / "o5"}, 2, {"excludes"}},
      {{"inspect", "--model", dir / "no-config", "--image", "0", "--data", data, "--out", dir / "o6"}, 1,
       {"config.json"}},
      {{"inspect", "--model", dir / "bert", "--image", "0", "--data", data, "--out", dir / "o7"}, 1,
       {"'bert'", "'vit' and 'gpt'"}},
      {{"inspect", "--model", dir / "list", "--image", "0", "--data", data, "--out", dir / "o8"}, 1,
       {"not a model config"}},
      {{"inspect", "--model", dir / "nowhere", "--image", "0", "--out", dir / "o9"}, 2, {"--model"}},
  });
}

TEST_CASE("cli: inspect a trained causal GPT: maps with nothing above the diagonal; bad texts exit 1") {
  TempDir dir;
  const std::string text = dir / "text.txt", model = dir / "gpt";
  write_bytes(text, pattern_text(2000));
  const Run train = run_ellipse({"train", "gpt", "--text", text, "--attn", "elliptical", "--steps", "2", "--batch",
                                 "2", "--eval-every", "2", "--out", model});
  INFO(train.err);
  REQUIRE(train.status == 0);

  const std::string prompt = "bad cab face", out = dir / "inspect";
  const Run run = run_ellipse({"inspect", "--model", model, "--text", prompt, "--out", out});
  INFO(run.err);
  REQUIRE(run.status == 0);
  const Tensor maps = io::load_npy(out + "/attention.npy");  // gpt-s: 4 layers, 4 heads
  REQUIRE(maps.shape() == Shape{4, 4, 12, 12});
  const Vec values = as_doubles(maps);
  check_rows_sum_to_one(values, 4 * 4 * 12, 12);
  double above = 0;
  for (std::int64_t panel = 0; panel < 16; ++panel)
    for (std::int64_t i = 0; i < 12; ++i)
      for (std::int64_t j = i + 1; j < 12; ++j) above += std::abs(values[static_cast<std::size_t>((panel * 12 + i) * 12 + j)]);
  CHECK(above == 0.0);
  check_panels_drawn(decode_png(read_bytes(out + "/attention.png")), panels_of(maps),
                     {.cell_px = 6, .from_zero = true});
  const Json summary = read_json(out + "/summary.json");
  CHECK(summary["text"] == prompt);
  CHECK(summary["layers"]["collapse_block"].size() == 4);
  CHECK(summary["m"].size() == 3);  // layers 1-3 are elliptical
  CHECK(read_json(out + "/metric.json") == summary["m"]);
  CHECK(fs::exists(out + "/metric.png"));
  CHECK_FALSE(fs::exists(out + "/image.png"));
  CHECK_FALSE(fs::exists(out + "/class_attention_layer0.png"));

  check_bad({
      {{"inspect", "--model", model, "--text", pattern_text(129).substr(0, 129), "--out", dir / "o1"}, 1,
       {"129 characters", "context length 128"}},
      {{"inspect", "--model", model, "--text", "a", "--out", dir / "o2"}, 1, {"1 characters", "expected 2"}},
      {{"inspect", "--model", model, "--text", "cab?", "--out", dir / "o3"}, 1, {"'?'", "not in the vocabulary"}},
      {{"inspect", "--model", model, "--image", "0", "--out", dir / "o4"}, 1, {"holds a GPT", "set text"}},
  });
}

// ---------------------------------------------------------------------------------------------------
// ellipse study vit

TEST_CASE("cli: study vit --preset quick on synthetic files: summary, report, figures; no overwrite") {
  TempDir dir;
  const std::string data = dir / "data", out = dir / "study";
  // 128 training images are one step an epoch; 8 test images keep the 2 x 4 PGD-20 runs short.
  write_dataset(data, 128, 8);
  const auto start = std::chrono::steady_clock::now();
  const Run run = run_ellipse({"study", "vit", "--preset", "quick", "--data", data, "--out", out});
  MESSAGE("study vit --preset quick took ",
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), " s");
  INFO(run.err);
  REQUIRE(run.status == 0);

  const std::string summary_text = read_bytes(out + "/summary.json");
  const Json summary = Json::parse(summary_text);
  CHECK(summary["preset"] == "quick");
  CHECK(summary["seeds"] == 1);
  CHECK(summary["config"] == "vit-xs");
  CHECK(summary["epochs"] == 5);
  CHECK(summary["batch"] == 64);
  auto keys_of = [](const Json& j) {
    std::vector<std::string> keys;
    for (const auto& item : j.items()) keys.push_back(item.key());
    std::sort(keys.begin(), keys.end());
    return keys;
  };
  // A statistic over one seed: its value, that value as the mean, and no spread.
  auto check_stat = [](const Json& stat) {
    REQUIRE(stat.contains("values"));
    const auto values = stat["values"].get<Vec>();
    REQUIRE(values.size() == 1);
    CHECK(stat["mean"].get<double>() == values[0]);
    CHECK(stat["std"].get<double>() == 0.0);
    return values[0];
  };
  const std::vector<std::string> eps_keys{"1/255", "2/255", "4/255", "8/255"};
  for (const char* kind : {"standard", "elliptical"}) {
    CAPTURE(kind);
    const Json& k = summary[kind];
    CHECK(keys_of(k) == std::vector<std::string>{"collapse_attn", "collapse_block", "fgsm", "head_redundancy", "noise",
                                                 "pgd", "test_acc", "train_seconds"});
    const double acc = check_stat(k["test_acc"]);
    CHECK(keys_of(k["noise"]) == std::vector<std::string>{"0.1", "0.2", "0.3"});
    for (const auto& item : k["noise"].items()) {
      const double v = check_stat(item.value());
      CHECK((v >= 0 && v <= 1));
    }
    for (const char* attack : {"fgsm", "pgd"}) {
      CHECK(keys_of(k[attack]) == eps_keys);
      for (const auto& item : k[attack].items()) {
        const double v = check_stat(item.value());
        CHECK((v >= 0 && v <= 1));
      }
    }
    // The strongest attack does no better than clean accuracy on the same (first) images; here all 16.
    CHECK(k["pgd"]["8/255"]["mean"].get<double>() <= acc);
    for (const char* per_layer : {"collapse_attn", "collapse_block", "head_redundancy"}) {
      CAPTURE(per_layer);
      const auto means = k[per_layer]["mean"].get<Vec>();
      CHECK(means.size() == 4);  // vit-xs has 4 layers
      CHECK(k[per_layer]["std"].get<Vec>() == Vec(4, 0.0));
      for (double v : means) CHECK((std::isfinite(v) && v >= -1 - 1e-9 && (per_layer[0] == 'h' ? v >= 0 : v <= 1 + 1e-9)));
    }
    CHECK(check_stat(k["train_seconds"]) > 0);
    // The run's last metrics.jsonl line is the reported accuracy.
    std::istringstream lines(read_bytes(out + "/runs/" + kind + "-seed0/metrics.jsonl"));
    std::string line, last;
    int count = 0;
    while (std::getline(lines, line)) {
      last = line;
      ++count;
    }
    CHECK(count == 5);  // one line per epoch
    CHECK(Json::parse(last)["test_acc"].get<double>() == acc);
  }

  // One seed: each comparison holds the one difference, with no interval and no verdict.
  const std::vector<std::string> measurement_keys{
      "test_acc",       "noise 0.1",     "noise 0.2",     "noise 0.3",      "fgsm 1/255",    "fgsm 2/255",
      "fgsm 4/255",     "fgsm 8/255",    "pgd 1/255",     "pgd 2/255",      "pgd 4/255",     "pgd 8/255",
      "collapse_attn",  "collapse_block", "head_redundancy"};
  REQUIRE(summary["comparisons"].size() == 1);
  const Json& compared = summary["comparisons"]["elliptical"];
  std::vector<std::string> sorted_keys = measurement_keys;
  std::sort(sorted_keys.begin(), sorted_keys.end());
  CHECK(keys_of(compared) == sorted_keys);
  CHECK(compared["test_acc"]["differences"].get<Vec>() ==
        Vec{summary["elliptical"]["test_acc"]["mean"].get<double>() - summary["standard"]["test_acc"]["mean"].get<double>()});
  for (const auto& key : measurement_keys) {
    CAPTURE(key);
    CHECK(compared[key]["ci95"].is_null());
    CHECK(compared[key]["verdict"] == "one seed: not judged");
  }

  const std::string report = read_bytes(out + "/report.md");
  const std::string table = report.substr(0, report.find("## What it shows"));
  CHECK(table.find("| metric | standard | elliptical |\n|---|---|---|\n") != std::string::npos);
  std::vector<std::string> rows{"| clean test accuracy (%) |", "| Gaussian noise sigma 0.1 (%) |",
                                "| Gaussian noise sigma 0.2 (%) |", "| Gaussian noise sigma 0.3 (%) |"};
  for (const char* attack : {"FGSM", "PGD-20"})
    for (const auto& e : eps_keys) rows.push_back(fmt::format("| {} eps {} (%) |", attack, e));
  for (const char* r : {"| collapse of attention outputs, mean over layers |",
                        "| collapse of block outputs, mean over layers |",
                        "| L2 distance between heads' maps, mean over layers |",
                        "| collapse, attention output, per layer |", "| collapse, block output, per layer |",
                        "| head redundancy (L2), per layer |", "| training time (s) |"})
    rows.push_back(r);
  for (const auto& r : rows) {
    CAPTURE(r);
    const auto at = table.find("\n" + r);
    CHECK(at != std::string::npos);
    CHECK(table.find("\n" + r, at + 1) == std::string::npos);
  }
  std::size_t table_rows = 0;  // the header, the rule and one row per metric
  {
    std::istringstream in(table);
    std::string line;
    while (std::getline(in, line)) table_rows += line.rfind("| ", 0) == 0 || line.rfind("|---", 0) == 0;
  }
  CHECK(table_rows == rows.size() + 2);
  // The paired table: one row per measurement, none judged on one seed.
  const auto paired = report.find("### elliptical minus standard, seed by seed (1 seed)\n\n| measurement | better when |");
  REQUIRE(paired != std::string::npos);
  CHECK(report.find("| clean test accuracy (%) | higher | ", paired) != std::string::npos);
  CHECK(report.find("| collapse of block outputs, mean over layers | lower | ", paired) != std::string::npos);
  CHECK(report.find("| no interval | one seed: not judged |", paired) != std::string::npos);
  CHECK(report.find("- clean test accuracy (%) (higher is better): elliptical ") != std::string::npos);

  // Every figure docs/study.md lists.
  const std::string figures = out + "/figures/";
  const std::vector<std::pair<std::string, std::vector<std::string>>> svgs{
      {"accuracy_vs_noise.svg", {"standard", "elliptical", "0 (clean)"}},
      {"accuracy_vs_eps.svg", {"standard FGSM", "standard PGD-20", "elliptical FGSM", "elliptical PGD-20"}},
      {"collapse_vs_layer.svg",
       {"standard (attention output)", "standard (block output)", "elliptical (attention output)",
        "elliptical (block output)"}},
      {"head_redundancy_vs_layer.svg", {"standard", "elliptical"}},
  };
  for (const auto& [name, series] : svgs) {
    CAPTURE(name);
    const std::string svg = read_bytes(figures + name);
    CHECK((svg.rfind("<svg", 0) == 0 || svg.rfind("<?xml", 0) == 0));
    CHECK(svg.find("</svg>") != std::string::npos);
    for (const auto& s : series) CHECK_MESSAGE(svg.find(">" + s + "<") != std::string::npos, s);
  }
  png_size(figures + "elliptical_metric.png");
  CHECK_FALSE(fs::exists(figures + "standard_metric.png"));
  for (const char* kind : {"standard", "elliptical"}) {
    png_size(figures + kind + "_attention.png");
    for (int l = 0; l < 4; ++l) png_size(figures + kind + "_class_attention_layer" + std::to_string(l) + ".png");
  }

  check_bad({
      {{"study", "vit", "--preset", "quick", "--data", data, "--out", out}, 1, {"already holds a study"}},
      {{"study", "vit", "--seeds", "0", "--data", data, "--out", dir / "s0"}, 2, {"--seeds"}},
      {{"study", "vit", "--preset", "bogus", "--data", data, "--out", dir / "sb"}, 2, {"--preset"}},
      {{"study", "vit", "--only", "random", "--data", data, "--out", dir / "sa"}, 1, {"only is 'random'"}},
      {{"study", "vit", "--kinds", "standard,elliptical-sequence", "--data", data, "--out", dir / "sk"}, 1,
       {"'elliptical-sequence' is 'elliptical' itself"}},
  });
  CHECK(read_bytes(out + "/summary.json") == summary_text);

  // A study split by attention kind: each call trains and measures its own runs and writes no summary; a
  // call with both then reuses them (no training) and gives the same summary, the timings aside.
  const std::string split = dir / "split";
  for (const char* kind : {"standard", "elliptical"}) {
    CAPTURE(kind);
    const Run part = run_ellipse({"study", "vit", "--preset", "quick", "--only", kind, "--data", data, "--out", split});
    INFO(part.err);
    REQUIRE(part.status == 0);
    CHECK(part.out.find("run again without --only") != std::string::npos);
    CHECK_FALSE(fs::exists(split + "/summary.json"));
    CHECK(read_json(split + "/runs/" + kind + "-seed0/study.json").contains("pgd 8/255"));
  }
  const Run joined = run_ellipse({"study", "vit", "--preset", "quick", "--data", data, "--out", split});
  INFO(joined.err);
  REQUIRE(joined.status == 0);
  CHECK(joined.out.find("epoch") == std::string::npos);
  Json split_summary = Json::parse(read_bytes(split + "/summary.json")), whole_summary = summary;
  for (Json* s : {&split_summary, &whole_summary})
    for (const char* kind : {"standard", "elliptical"}) (*s)[kind].erase("train_seconds");
  CHECK(split_summary == whole_summary);
  for (const char* bad : {"s0", "sa", "sk"}) CHECK_FALSE(fs::exists(dir / bad));

  // The runs keep their measurements in study.json: a study resumed from its run directories measures only
  // what is missing (the standard run's PGD at 8/255, with its model) and needs no model or checkpoint for the
  // rest (the elliptical run's are gone). Seeded attacks make the result the same summary, byte for byte.
  const std::string again = dir / "again";
  fs::create_directories(again);
  fs::copy(out + "/runs", again + "/runs", fs::copy_options::recursive);
  fs::copy(out + "/figures", again + "/figures", fs::copy_options::recursive);
  const std::string standard_cache = again + "/runs/standard-seed0/study.json";
  Json cached = read_json(standard_cache);
  REQUIRE(cached.contains("pgd 8/255"));
  CHECK(cached["test_acc"].get<double>() == summary["standard"]["test_acc"]["mean"].get<double>());
  cached.erase("pgd 8/255");
  std::ofstream(standard_cache) << cached.dump();
  for (const char* file : {"model.safetensors", "train_state.safetensors"})
    REQUIRE(fs::remove(again + "/runs/elliptical-seed0/" + file));
  const Run resumed = run_ellipse({"study", "vit", "--preset", "quick", "--data", data, "--out", again});
  INFO(resumed.err);
  REQUIRE(resumed.status == 0);
  CHECK(read_bytes(again + "/summary.json") == summary_text);
  CHECK(read_json(standard_cache).contains("pgd 8/255"));

  // A damaged cache is an error that names it, not a silent re-measurement.
  const std::string damaged = dir / "damaged";
  fs::create_directories(damaged);
  fs::copy(again + "/runs", damaged + "/runs", fs::copy_options::recursive);
  std::ofstream(damaged + "/runs/standard-seed0/study.json") << "{\"test_acc\": [";
  check_bad({{{"study", "vit", "--preset", "quick", "--data", data, "--out", damaged}, 1,
              {"runs/standard-seed0/study.json", "not valid JSON"}}});
  std::ofstream(damaged + "/runs/standard-seed0/study.json") << "{\"test_acc\": \"high\"}";
  check_bad({{{"study", "vit", "--preset", "quick", "--data", data, "--out", damaged}, 1,
              {"runs/standard-seed0/study.json", "malformed 'test_acc'"}}});
  CHECK_FALSE(fs::exists(damaged + "/summary.json"));
}
