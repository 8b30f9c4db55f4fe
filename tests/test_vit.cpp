// The ViT on Fashion-MNIST: the gzip IDX loader and its errors, patchify, the model's parameters and
// config.json, gradients through the whole forward, perturbations and attacks, training with an exact
// resume, and the `ellipse train|eval vit` commands. Every test writes its own tiny synthetic IDX files, so
// nothing depends on the real data set.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <tuple>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli_runner.hpp"
#include "fashion_fixture.hpp"
#include "helpers.hpp"
#include "models/checkpoint.hpp"
#include "models/fashion_mnist.hpp"
#include "models/vit.hpp"
#include "models/vit_train.hpp"

using namespace ellipse;
namespace fs = std::filesystem;

namespace {

using namespace ellipse::testing;  // TempDir, the synthetic data set, run_ellipse

// A ViT small enough to train in-test on 28x28 inputs. Its patches are 4x4 as in the presets: the
// textures' periods (2 and 4 pixels) divide 4, so every patch of a class looks alike.
ViTConfig tiny_config(std::string attention = "standard") {
  ViTConfig c;
  c.name = "tiny";
  c.n_layer = 2;
  c.d_model = 16;
  c.n_head = 2;
  c.attention = attention;
  return c;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
  return worst;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// The loader.

TEST_CASE("fashion-mnist: synthetic files round trip through load_fashion_mnist") {
  TempDir dir;
  write_dataset(dir.str(), 20, 12);
  const Synthetic train_bytes = synthetic(20, 1), test_bytes = synthetic(12, 2);
  for (const auto& [split, expected] : {std::pair{"train", &train_bytes}, std::pair{"test", &test_bytes}}) {
    CAPTURE(split);
    const LabeledImages data = load_fashion_mnist(dir.str(), split);
    const auto n = static_cast<std::int64_t>(expected->labels.size());
    REQUIRE(data.size() == n);
    CHECK(data.images.shape() == Shape{n, 28, 28});
    CHECK(data.images.dtype() == DType::f32);
    CHECK(data.labels.shape() == Shape{n});
    CHECK(data.labels.dtype() == DType::i64);
    const auto pixels = data.images.to_vector<float>();
    REQUIRE(pixels.size() == expected->pixels.size());
    bool all_scaled = true;
    for (std::size_t i = 0; i < pixels.size(); ++i)
      all_scaled = all_scaled && pixels[i] == static_cast<float>(expected->pixels[i]) / 255.0f;
    CHECK(all_scaled);
    const auto labels = data.labels.to_vector<std::int64_t>();
    for (std::size_t i = 0; i < labels.size(); ++i) CHECK(labels[i] == expected->labels[i]);
  }
  // The extremes of the byte range map to exactly 0 and 1.
  TempDir edge;
  std::vector<std::uint8_t> pixels(2 * 784, 0);
  std::fill(pixels.begin() + 784, pixels.end(), std::uint8_t{255});
  write_bytes(edge / "t10k-images-idx3-ubyte.gz", gzip(idx_images(2, 28, 28, pixels)));
  write_bytes(edge / "t10k-labels-idx1-ubyte.gz", gzip(idx_labels(2, {9, 0})));
  const LabeledImages two = load_fashion_mnist(edge.str(), "test");
  const auto values = two.images.to_vector<float>();
  CHECK(values.front() == 0.0f);
  CHECK(values.back() == 1.0f);
  CHECK(two.labels.to_vector<std::int64_t>() == std::vector<std::int64_t>{9, 0});

  CHECK(fashion_mnist_class_names().size() == static_cast<std::size_t>(kFashionMnistClasses));
  CHECK(fashion_mnist_class_names()[9] == "Ankle boot");
  CHECK_ERROR(load_fashion_mnist(dir.str(), "val"), "unknown split 'val'");
}

TEST_CASE("fashion-mnist: gunzip accepts concatenated members and refuses what is not whole gzip") {
  const Bytes text = "the quick brown fox jumps over the lazy dog\n";
  CHECK(gunzip(gzip(text), "a.gz", 1 << 20) == text);
  CHECK(gunzip(gzip(""), "empty.gz", 1 << 20).empty());
  // Several members, as `cat a.gz b.gz` makes: one stream.
  CHECK(gunzip(gzip("abc") + gzip(text) + gzip("xyz", 0), "cat.gz", 1 << 20) == "abc" + text + "xyz");
  // Output far larger than the input and than the 64 KiB buffer: a few bytes of input yield many buffers.
  const Bytes zeros(3 << 20, '\0');
  const Bytes packed = gzip(zeros, 9);
  CHECK(packed.size() < 8192);
  CHECK(gunzip(packed, "zeros.gz", zeros.size()) == zeros);
  CHECK(gunzip(packed + packed, "zeros2.gz", 2 * zeros.size()) == zeros + zeros);

  // The limit: exactly max_bytes is fine, one byte less is refused.
  CHECK(gunzip(gzip(text), "a.gz", text.size()) == text);
  CHECK_ERROR(gunzip(gzip(text), "a.gz", text.size() - 1), "a.gz", "more than 43 bytes");
  CHECK_ERROR(gunzip(packed, "zeros.gz", 1 << 20), "zeros.gz", "more than 1048576 bytes");

  CHECK_ERROR(gunzip("", "e.gz", 100), "e.gz", "not gzip");
  CHECK_ERROR(gunzip("\x1f", "one.gz", 100), "one.gz", "not gzip");
  CHECK_ERROR(gunzip(text, "plain.txt", 100), "plain.txt", "not gzip", "1f 8b");
  const Bytes good = gzip(text);
  CHECK_ERROR(gunzip(good.substr(0, good.size() / 2), "half.gz", 1 << 20), "half.gz", "truncated");
  CHECK_ERROR(gunzip(good.substr(0, good.size() - 4), "notrailer.gz", 1 << 20), "notrailer.gz", "truncated");
  CHECK_ERROR(gunzip(good.substr(0, 10), "header.gz", 1 << 20), "header.gz", "truncated");
  CHECK_ERROR(gunzip(good + good.substr(0, 12), "second.gz", 1 << 20), "second.gz", "truncated");
  Bytes bad_crc = good;
  bad_crc[bad_crc.size() - 6] = static_cast<char>(bad_crc[bad_crc.size() - 6] ^ 0x55);
  CHECK_ERROR(gunzip(bad_crc, "crc.gz", 1 << 20), "crc.gz", "incorrect data check");
  Bytes bad_method = good;
  bad_method[2] = 7;  // only 8 (deflate) exists
  CHECK_ERROR(gunzip(bad_method, "method.gz", 1 << 20), "method.gz", "unknown compression method");
  // Trailing bytes that are not another member.
  CHECK_ERROR(gunzip(good + "junk", "junk.gz", 1 << 20), "junk.gz", "gzip data is");
}

TEST_CASE("fashion-mnist: IDX headers and payloads are validated, naming the file and the problem") {
  const std::vector<std::uint8_t> one(784, 7), three(3 * 784, 7);
  const IdxImages parsed = parse_idx_images(idx_images(3, 28, 28, three), "img");
  CHECK(parsed.count == 3);
  CHECK(parsed.rows == 28);
  CHECK(parsed.cols == 28);
  CHECK(parsed.pixels == three);

  CHECK_ERROR(parse_idx_images("", "img"), "img", "too short");
  CHECK_ERROR(parse_idx_images(Bytes("\0\0\x08", 3), "img"), "img", "too short");
  CHECK_ERROR(parse_idx_images(idx_images(1, 28, 28, one, 0x00000801), "img"), "img", "bad magic 0x00000801",
              "0x00000803");
  CHECK_ERROR(parse_idx_images(idx_images(1, 28, 28, one, 0x00000c03), "img"), "img", "bad magic");  // int32 pixels
  CHECK_ERROR(parse_idx_images(idx_images(1, 28, 28, {}).substr(0, 10), "img"), "img", "truncated IDX header");
  CHECK_ERROR(parse_idx_images(idx_images(1, 32, 32, std::vector<std::uint8_t>(1024)), "img"), "img", "32x32",
              "28x28");
  CHECK_ERROR(parse_idx_images(idx_images(1, 28, 27, one), "img"), "img", "28x27");
  CHECK_ERROR(parse_idx_images(idx_images(0, 28, 28, {}), "img"), "img", "no images");
  CHECK_ERROR(parse_idx_images(idx_images(3, 28, 28, one), "img"), "img", "promises 3 images", "truncated");
  CHECK_ERROR(parse_idx_images(idx_images(1, 28, 28, three), "img"), "img", "promises 1 images", "too long");
  // An absurd count with a tiny payload fails on the size check, before anything is allocated for it.
  const auto start = std::chrono::steady_clock::now();
  CHECK_ERROR(parse_idx_images(idx_images(0xFFFFFFFFu, 28, 28, one), "img"), "img", "4294967295 images",
              "truncated");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));

  CHECK(parse_idx_labels(idx_labels(4, {0, 9, 3, 9}), "lbl", 10) == std::vector<std::int64_t>{0, 9, 3, 9});
  CHECK_ERROR(parse_idx_labels(idx_labels(4, {0, 9, 3, 10}), "lbl", 10), "lbl", "label 10 of item 3",
              "out of range", "0 to 9");
  CHECK_ERROR(parse_idx_labels(idx_labels(2, {0, 255}), "lbl", 10), "lbl", "label 255 of item 1");
  CHECK_ERROR(parse_idx_labels(idx_labels(2, {0, 4}), "lbl", 4), "lbl", "label 4");
  CHECK_ERROR(parse_idx_labels(idx_labels(1, {0}, 0x00000803), "lbl", 10), "lbl", "bad magic 0x00000803");
  CHECK_ERROR(parse_idx_labels(idx_labels(0, {}), "lbl", 10), "lbl", "no labels");
  CHECK_ERROR(parse_idx_labels(idx_labels(5, {1, 2}), "lbl", 10), "lbl", "promises 5 labels", "truncated");
  CHECK_ERROR(parse_idx_labels(idx_labels(1, {1, 2}), "lbl", 10), "lbl", "promises 1 labels", "too long");
  CHECK_ERROR(parse_idx_labels(idx_labels(0xFFFFFFFFu, {1}), "lbl", 10), "lbl", "4294967295", "truncated");
  CHECK_ERROR(parse_idx_labels(idx_labels(1, {1}).substr(0, 6), "lbl", 10), "lbl", "truncated IDX header");
}

TEST_CASE("fashion-mnist: load_fashion_mnist names the file and the problem") {
  TempDir dir;
  const std::string images = dir / "t10k-images-idx3-ubyte.gz", labels = dir / "t10k-labels-idx1-ubyte.gz";
  const Synthetic data = synthetic(4, 3);
  const Bytes good_images = idx_images(4, 28, 28, data.pixels), good_labels = idx_labels(4, data.labels);
  auto write = [&](const Bytes& image_file, const Bytes& label_file) {
    write_bytes(images, image_file);
    write_bytes(labels, label_file);
  };

  // Missing files point at the Debian package.
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), images, "no such file", "dataset-fashion-mnist",
              "or give the directory that holds the files");
  write_bytes(images, gzip(good_images));
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), labels, "no such file", "dataset-fashion-mnist");
  CHECK_ERROR(load_fashion_mnist(dir / "nowhere", "train"), "train-images-idx3-ubyte.gz", "no such file");

  write(gzip(good_images), gzip(good_labels));
  CHECK(load_fashion_mnist(dir.str(), "test").size() == 4);

  write(good_images, gzip(good_labels));  // not compressed
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), images, "not gzip");
  const Bytes packed = gzip(good_images);
  write(packed.substr(0, packed.size() - 100), gzip(good_labels));
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), images, "truncated");
  Bytes corrupt = packed;
  for (std::size_t i = 20; i < 60; ++i) corrupt[i] = static_cast<char>(0xFF);
  write(corrupt, gzip(good_labels));
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), images, "gzip data is");
  write(gzip(good_labels), gzip(good_labels));  // labels where the images belong
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), images, "bad magic");
  write(gzip(idx_images(5, 28, 28, data.pixels)), gzip(good_labels));
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), images, "truncated");
  write(gzip(good_images + "x"), gzip(good_labels));
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), images, "too long");
  write(gzip(idx_images(1, 32, 32, std::vector<std::uint8_t>(1024))), gzip(good_labels));
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), images, "32x32");
  write(gzip(idx_images(0xFFFFFFFFu, 28, 28, std::vector<std::uint8_t>(784))), gzip(good_labels));
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), images, "4294967295");
  write(gzip(good_images), gzip(idx_labels(4, {1, 2, 3, 10})));
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), labels, "label 10 of item 3");
  write(gzip(good_images), gzip(idx_labels(3, {1, 2, 3})));
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), images, "4 images", labels, "3 labels");
  write(gzip(good_images), gzip(idx_labels(0, {})));
  CHECK_ERROR(load_fashion_mnist(dir.str(), "test"), labels, "no labels");

  // Concatenated members are one file, as gzip defines it.
  write(gzip(good_images.substr(0, 1000)) + gzip(good_images.substr(1000)), gzip(good_labels));
  const LabeledImages joined = load_fashion_mnist(dir.str(), "test");
  CHECK(joined.size() == 4);
  CHECK(joined.images.to_vector<float>()[1000 - 16] == static_cast<float>(data.pixels[1000 - 16]) / 255.0f);
}

// ---------------------------------------------------------------------------------------------------
// patchify and the model.

TEST_CASE("vit: patchify orders patches row-major over the grid and pixels row-major inside a patch") {
  Generator gen(5);
  for (auto [batch, side, patch] : {std::tuple{2, 8, 4}, std::tuple{1, 28, 4}, std::tuple{3, 6, 2}, std::tuple{1, 5, 5},
                                    std::tuple{2, 4, 1}}) {
    CAPTURE(side);
    CAPTURE(patch);
    const Tensor images = randn({batch, side, side}, gen);
    const Tensor patches = patchify(images, patch);
    const std::int64_t grid = side / patch;
    REQUIRE(patches.shape() == Shape{batch, grid * grid, patch * patch});
    const auto in = images.to_vector<float>(), out = patches.to_vector<float>();
    std::size_t k = 0, mismatches = 0;
    for (int b = 0; b < batch; ++b)
      for (int py = 0; py < grid; ++py)
        for (int px = 0; px < grid; ++px)
          for (int iy = 0; iy < patch; ++iy)
            for (int ix = 0; ix < patch; ++ix) {
              const int y = py * patch + iy, x = px * patch + ix;
              mismatches += out[k++] != in[static_cast<std::size_t>((b * side + y) * side + x)];
            }
    CHECK(k == out.size());
    CHECK(mismatches == 0);
  }
  // The 28x28 case by hand: patch 8 (row 1, column 1 of the 7x7 grid) starts at pixel (4, 4); its pixel 5
  // (row 1, column 1 inside) is pixel (5, 5).
  std::vector<float> ramp(784);
  for (std::size_t i = 0; i < ramp.size(); ++i) ramp[i] = static_cast<float>(i);
  const auto p = patchify(from_vector(ramp, {1, 28, 28}), 4).to_vector<float>();
  CHECK(p[8 * 16 + 0] == 4 * 28 + 4);
  CHECK(p[8 * 16 + 5] == 5 * 28 + 5);
  CHECK(p[48 * 16 + 15] == 783);

  CHECK_ERROR(patchify(zeros({8, 8}), 4), "patchify", "[8, 8]");
  CHECK_ERROR(patchify(zeros({1, 8, 6}), 2), "patchify", "[1, 8, 6]");
  CHECK_ERROR(patchify(zeros({1, 8, 8}), 3), "patchify", "multiple of 3");
  CHECK_ERROR(patchify(zeros({1, 8, 8}), 0), "patchify");
  CHECK_ERROR(patchify(zeros({1, 8, 8}), -4), "patchify");
  CHECK_ERROR(patchify(Tensor(), 4), "patchify", "undefined");
}

TEST_CASE("vit: presets, parameter count, names and shapes are the checkpoint format") {
  for (const std::string attention : {"standard", "elliptical"}) {
    ViTConfig config = vit_preset("vit-s");
    config.attention = attention;
    const ViT model(config);
    CHECK(model.parameter_count() == 1'199'872);

    const auto named = model.named_parameters();
    std::vector<std::string> expected{"cls_token", "pos_emb", "patch_emb.weight", "patch_emb.bias"};
    for (int i = 0; i < 6; ++i)
      for (const char* sub : {"ln1", "attn.qkv", "attn.proj", "ln2", "mlp.fc1", "mlp.fc2"})
        for (const char* kind : {"weight", "bias"})
          expected.push_back(fmt::format("blocks.{}.{}.{}", i, sub, kind));
    for (const char* name : {"ln_f.weight", "ln_f.bias", "head.weight"}) expected.emplace_back(name);
    REQUIRE(named.size() == expected.size());
    CHECK(named.size() == 79);
    for (std::size_t i = 0; i < named.size(); ++i) CHECK(named[i].first == expected[i]);

    const std::map<std::string, Shape> shapes{
        {"patch_emb.weight", {128, 16}},      {"patch_emb.bias", {128}},           {"cls_token", {128}},
        {"pos_emb", {50, 128}},               {"blocks.0.ln1.weight", {128}},      {"blocks.0.attn.qkv.weight", {384, 128}},
        {"blocks.3.attn.qkv.bias", {384}},    {"blocks.5.attn.proj.weight", {128, 128}},
        {"blocks.5.mlp.fc1.weight", {512, 128}}, {"blocks.5.mlp.fc1.bias", {512}},
        {"blocks.2.mlp.fc2.weight", {128, 512}}, {"ln_f.bias", {128}},            {"head.weight", {10, 128}}};
    for (const auto& [name, shape] : shapes) {
      CAPTURE(name);
      CHECK(model.parameter(name).shape() == shape);
      CHECK(model.parameter(name).dtype() == DType::f32);
    }
    CHECK_ERROR(model.parameter("head.bias"), "head.bias");
  }
  const ViTConfig xs = vit_preset("vit-xs");
  CHECK(xs.name == "vit-xs");
  CHECK(xs.n_layer == 4);
  CHECK(xs.d_model == 32);
  CHECK(xs.n_head == 4);
  CHECK(xs.tokens() == 50);
  // The count from the shapes: embeddings, 4 blocks of (2 LayerNorms, qkv, proj, MLP), ln_f and the head.
  const std::int64_t d = 32, block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d);
  CHECK(ViT(xs).parameter_count() == (16 * d + d) + d + 50 * d + 4 * block + 2 * d + 10 * d);
  CHECK_ERROR(vit_preset("vit-m"), "vit-m", "vit-s", "vit-xs");

  ViTConfig bad = tiny_config();
  bad.patch = 5;
  CHECK_ERROR(ViT(bad), "image side 28", "patch side 5");
  bad = tiny_config();
  bad.n_head = 3;
  CHECK_ERROR(ViT(bad), "d_model (16)", "n_head (3)");
  bad = tiny_config();
  bad.classes = 1;
  CHECK_ERROR(ViT(bad), "classes (1)");
}

TEST_CASE("vit: forward shapes, seeds, batch independence and input checks") {
  Generator gen(11);
  const Tensor images = uniform({3, 28, 28}, 0.0, 1.0, gen);
  for (const std::string attention : {"standard", "elliptical"}) {
    CAPTURE(attention);
    ViT model(tiny_config(attention), 4);
    model.eval();
    const Tensor logits = model.forward(images);
    CHECK(logits.shape() == Shape{3, 10});
    for (float v : logits.to_vector<float>()) CHECK(std::isfinite(v));
    ViT same(tiny_config(attention), 4), other(tiny_config(attention), 5);
    same.eval();
    other.eval();
    CHECK(same.forward(images).to_vector<float>() == logits.to_vector<float>());
    CHECK(max_abs_diff(other.forward(images).to_vector<float>(), logits.to_vector<float>()) > 1e-4);
    // Each image is classified on its own (the metric is estimated per image).
    const auto alone = model.forward(narrow(images, 0, 1, 1)).to_vector<float>();
    const auto all = logits.to_vector<float>();
    CHECK(max_abs_diff(alone, std::vector<float>(all.begin() + 10, all.begin() + 20)) < 1e-5);

    CHECK_ERROR(model.forward(zeros({2, 8, 8})), "vit", "[2, 8, 8]", "28");
    CHECK_ERROR(model.forward(zeros({28, 28})), "vit", "[28, 28]");
    CHECK_ERROR(model.forward(zeros({1, 28, 28}, DType::i64)), "vit", "floating-point");
    CHECK_ERROR(model.forward(Tensor()), "vit", "undefined");
  }
  // Layer 0 is standard in both kinds, so one-layer models of the same seed agree; from layer 1 on they differ.
  for (std::int64_t layers : {1, 2}) {
    ViTConfig s = tiny_config("standard"), e = tiny_config("elliptical");
    s.n_layer = e.n_layer = layers;
    ViT standard(s, 9), elliptical(e, 9);
    const double diff = max_abs_diff(standard.forward(images).to_vector<float>(),
                                     elliptical.forward(images).to_vector<float>());
    CAPTURE(layers);
    if (layers == 1) CHECK(diff == 0.0);
    else CHECK(diff > 1e-6);
  }
}

TEST_CASE("vit: config.json round trip, and every bad field named with the file") {
  ViTConfig config;
  config.name = "vit-xs";
  config.image = 12;
  config.patch = 3;
  config.n_layer = 3;
  config.d_model = 12;
  config.n_head = 3;
  config.classes = 5;
  config.attention = "elliptical";
  config.metric = nn::MetricMode::causal;
  config.dropout = 0.25;
  const std::string text = vit_config_json(config);
  const ViTConfig back = parse_vit_config_json(text, "cfg.json");
  CHECK(back.name == config.name);
  CHECK(back.image == 12);
  CHECK(back.patch == 3);
  CHECK(back.n_layer == 3);
  CHECK(back.d_model == 12);
  CHECK(back.n_head == 3);
  CHECK(back.classes == 5);
  CHECK(back.attention == "elliptical");
  CHECK(back.metric == nn::MetricMode::causal);
  CHECK(back.dropout == 0.25);
  CHECK(vit_config_json(back) == text);
  const auto json = nlohmann::json::parse(text);
  CHECK(json["model"] == "vit");
  CHECK(json["attn"] == "elliptical");
  CHECK(json["m_mode"] == "causal");
  // dropout is optional (0 when absent); the batch is a training flag, not part of the model.
  auto without_dropout = json;
  without_dropout.erase("dropout");
  CHECK(parse_vit_config_json(without_dropout.dump(), "cfg.json").dropout == 0.0);
  CHECK_FALSE(json.contains("batch"));

  auto edited = [&](const char* key, const nlohmann::json& value) {
    auto copy = json;
    copy[key] = value;
    return copy.dump();
  };
  for (const char* key : {"model", "config", "image", "patch", "n_layer", "d_model", "n_head", "classes", "attn",
                          "m_mode"}) {
    auto copy = json;
    copy.erase(key);
    CHECK_ERROR(parse_vit_config_json(copy.dump(), "cfg.json"), "cfg.json", fmt::format("'{}'", key), "missing");
  }
  CHECK_ERROR(parse_vit_config_json(edited("n_layer", "6"), "cfg.json"), "cfg.json", "'n_layer'", "integer");
  CHECK_ERROR(parse_vit_config_json(edited("d_model", 12.5), "cfg.json"), "cfg.json", "'d_model'", "integer");
  CHECK_ERROR(parse_vit_config_json(edited("config", 7), "cfg.json"), "cfg.json", "'config'", "string");
  CHECK_ERROR(parse_vit_config_json(edited("dropout", "0.1"), "cfg.json"), "cfg.json", "'dropout'");
  CHECK_ERROR(parse_vit_config_json(edited("n_layer", 0), "cfg.json"), "cfg.json", "'n_layer' is 0");
  CHECK_ERROR(parse_vit_config_json(edited("classes", 1), "cfg.json"), "cfg.json", "'classes' is 1");
  CHECK_ERROR(parse_vit_config_json(edited("image", -28), "cfg.json"), "cfg.json", "'image' is -28");
  CHECK_ERROR(parse_vit_config_json(edited("dropout", 1.0), "cfg.json"), "cfg.json", "'dropout'", "[0, 1)");
  CHECK_ERROR(parse_vit_config_json(edited("model", "gpt"), "cfg.json"), "cfg.json", "'gpt'", "'vit'");
  CHECK_ERROR(parse_vit_config_json(edited("attn", "ellipse"), "cfg.json"), "cfg.json", "'attn'", "ellipse");
  CHECK_ERROR(parse_vit_config_json(edited("m_mode", "mean"), "cfg.json"), "cfg.json", "'m_mode'", "mean");
  CHECK_ERROR(parse_vit_config_json(edited("patch", 5), "cfg.json"), "cfg.json", "image side 12", "patch side 5");
  CHECK_ERROR(parse_vit_config_json(edited("n_head", 5), "cfg.json"), "cfg.json", "n_head (5)");
  CHECK_ERROR(parse_vit_config_json("[1, 2]", "cfg.json"), "cfg.json", "not a JSON object");
  CHECK_ERROR(parse_vit_config_json("{\"model\": ", "cfg.json"), "cfg.json", "not a JSON object");
}

TEST_CASE("vit: load_vit restores the saved model exactly, in eval mode") {
  TempDir dir;
  Generator gen(2);
  const Tensor images = uniform({4, 28, 28}, 0.0, 1.0, gen);
  ViTConfig config = tiny_config("elliptical");
  config.dropout = 0.1;
  ViT model(config, 21);
  model.eval();
  const auto logits = model.forward(images).to_vector<float>();
  io::write_file_atomic(dir / "config.json", vit_config_json(model.config()));
  save_parameters(dir / "model.safetensors", model);

  const auto loaded = load_vit(dir.str());
  CHECK_FALSE(loaded->training());
  CHECK(loaded->config().attention == "elliptical");
  CHECK(loaded->config().dropout == 0.1);
  CHECK(loaded->forward(images).to_vector<float>() == logits);
  CHECK(loaded->forward(images).to_vector<float>() == logits);  // eval mode: no dropout draws

  // A config that does not match the weights is refused, naming the weights file.
  ViTConfig wider = config;
  wider.d_model = 32;
  io::write_file_atomic(dir / "config.json", vit_config_json(wider));
  CHECK_ERROR(load_vit(dir.str()), dir / "model.safetensors");
  CHECK_ERROR(load_vit(dir / "nowhere"), "config.json");
}

// ---------------------------------------------------------------------------------------------------
// Gradients through the whole model.

namespace {

// Turns every parameter of `module` into f64 in place: the layers hold handles to the same TensorImpl, so
// they compute in double precision afterwards. (There is no Module::to(DType) yet.)
void convert_parameters_to_f64(const nn::Module& module) {
  for (const auto& [name, parameter] : module.named_parameters()) {
    const Tensor f64 = parameter.detach().to(DType::f64).contiguous();
    TensorImpl& impl = *parameter.impl();
    impl.storage = f64.storage();
    impl.shape = f64.shape();
    impl.strides = f64.strides();
    impl.offset = f64.offset();
    impl.dtype = DType::f64;
    impl.grad.reset();
  }
}

}  // namespace

TEST_CASE("vit: f64 gradient check of logits and loss with respect to the images and every parameter") {
  ViTConfig config;
  config.name = "grad";
  config.image = 8;
  config.patch = 4;
  config.n_layer = 2;
  config.d_model = 8;
  config.n_head = 2;
  config.classes = 3;
  ViT model(config, 6);
  convert_parameters_to_f64(model);
  Generator gen(8);
  const Tensor images = uniform({2, 8, 8}, 0.0, 1.0, gen, DType::f64).requires_grad_();
  const Tensor labels = from_vector(std::vector<std::int64_t>{2, 0}, {2});

  std::vector<Tensor> inputs = model.parameters();
  inputs.push_back(images);
  const auto logits = gradcheck([&](const std::vector<Tensor>&) { return model.forward(images); }, inputs);
  INFO(logits.worst);
  CHECK(logits.max_error < 1e-6);
  // The attacks' path: the loss with respect to the pixels alone.
  const auto loss = gradcheck([&](const std::vector<Tensor>&) { return cross_entropy(model.forward(images), labels); },
                              {images});
  INFO(loss.worst);
  CHECK(loss.max_error < 1e-6);

  // Elliptical attention treats its metric m as a constant (a stop-gradient), so finite differences of
  // the whole model, which move m too, are not its gradient. The parameters after the last metric are
  // checked instead: there m does not move.
  config.attention = "elliptical";
  ViT elliptical(config, 6);
  convert_parameters_to_f64(elliptical);
  std::vector<Tensor> after_metric;
  for (const char* name : {"blocks.1.attn.proj.weight", "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.bias",
                           "ln_f.weight", "head.weight"})
    after_metric.push_back(elliptical.parameter(name));
  const auto tail = gradcheck([&](const std::vector<Tensor>&) { return elliptical.forward(images); }, after_metric);
  INFO(tail.worst);
  CHECK(tail.max_error < 1e-6);
}

// ---------------------------------------------------------------------------------------------------
// Perturbations and evaluation.

TEST_CASE("perturbation: parse accepts the documented forms and names what is wrong") {
  using Kind = Perturbation::Kind;
  auto p = Perturbation::parse("gaussian:0.1");
  CHECK(p.kind == Kind::gaussian);
  CHECK(p.size == 0.1);
  CHECK(p.str() == "gaussian:0.1");
  p = Perturbation::parse("fgsm:8/255");
  CHECK(p.kind == Kind::fgsm);
  CHECK(p.size == 8.0 / 255.0);
  p = Perturbation::parse("pgd:8/255");
  CHECK(p.kind == Kind::pgd);
  CHECK(p.size == 8.0 / 255.0);
  CHECK(p.steps == 20);
  CHECK(p.step_size == 0);
  p = Perturbation::parse("pgd:0.03,10");
  CHECK(p.size == 0.03);
  CHECK(p.steps == 10);
  CHECK(p.step_size == 0);
  CHECK(p.str() == fmt::format("pgd:0.03,10,{}", 0.03 / 4));
  p = Perturbation::parse("pgd:0.03,10,0.01");
  CHECK(p.steps == 10);
  CHECK(p.step_size == 0.01);
  CHECK(p.str() == "pgd:0.03,10,0.01");
  CHECK(Perturbation::parse("fgsm:0").size == 0);
  CHECK(Perturbation::parse("gaussian:1").size == 1);
  CHECK(Perturbation::parse("pgd:1/10,2/1").steps == 2);
  CHECK(Perturbation{}.str() == "clean");
  CHECK(Perturbation{}.kind == Kind::none);
  CHECK(Perturbation::parse("clean").kind == Kind::none);  // what str() writes reads back

  CHECK_ERROR(Perturbation::parse("gaussian"), "'gaussian'", "gaussian:SIGMA");
  CHECK_ERROR(Perturbation::parse(""), "gaussian:SIGMA");
  CHECK_ERROR(Perturbation::parse("uniform:0.1"), "unknown kind 'uniform'");
  CHECK_ERROR(Perturbation::parse("fgsm:abc"), "'fgsm:abc'", "not a number");
  CHECK_ERROR(Perturbation::parse("fgsm:"), "not a number");
  CHECK_ERROR(Perturbation::parse("fgsm:0.1x"), "not a number");
  CHECK_ERROR(Perturbation::parse("fgsm:nan"), "not a number");
  CHECK_ERROR(Perturbation::parse("fgsm:inf"), "not a number");
  CHECK_ERROR(Perturbation::parse("fgsm:8/"), "not a number");
  CHECK_ERROR(Perturbation::parse("fgsm:/255"), "not a number");
  CHECK_ERROR(Perturbation::parse("fgsm:8/255/2"), "not a number");
  CHECK_ERROR(Perturbation::parse("fgsm:1.5"), "1.5", "[0, 1]");
  CHECK_ERROR(Perturbation::parse("gaussian:-0.1"), "-0.1", "[0, 1]");
  CHECK_ERROR(Perturbation::parse("pgd:300/255"), "[0, 1]");
  CHECK_ERROR(Perturbation::parse("fgsm:8/0"), "'fgsm:8/0'", "divides by zero");
  CHECK_ERROR(Perturbation::parse("pgd:0.1,2.5"), "STEPS", "integer");
  CHECK_ERROR(Perturbation::parse("pgd:0.1,0"), "STEPS");
  CHECK_ERROR(Perturbation::parse("pgd:0.1,20000"), "STEPS");
  CHECK_ERROR(Perturbation::parse("pgd:0.1,ten"), "not a number");
  CHECK_ERROR(Perturbation::parse("pgd:0.1,10,0"), "STEP", "(0, 1]");
  CHECK_ERROR(Perturbation::parse("pgd:0.1,10,2"), "STEP", "(0, 1]");
  CHECK_ERROR(Perturbation::parse("pgd:0.1,10,0.01,4"), "pgd takes");
  CHECK_ERROR(Perturbation::parse("pgd:0.1,"), "not a number");
  CHECK_ERROR(Perturbation::parse("fgsm:0.1,3"), "fgsm takes one number");
  CHECK_ERROR(Perturbation::parse("gaussian:0.1,3"), "gaussian takes one number");
}

namespace {

// The tiny ViT after a few full-batch AdamW steps on synthetic data, so that attacks have something to undo.
struct TrainedTiny {
  std::unique_ptr<ViT> model;
  LabeledImages test;
};

const TrainedTiny& trained_tiny() {
  static const TrainedTiny trained = [] {
    TempDir dir;
    write_dataset(dir.str(), 64, 32);
    TrainedTiny t{std::make_unique<ViT>(tiny_config(), 3), load_fashion_mnist(dir.str(), "test")};
    const LabeledImages train = load_fashion_mnist(dir.str(), "train");
    nn::AdamW optimizer(t.model->parameters(), {.lr = 1e-2});
    for (int step = 0; step < 20; ++step) {
      optimizer.zero_grad();
      cross_entropy(t.model->forward(train.images), train.labels).backward();
      optimizer.step();
    }
    t.model->zero_grad();
    t.model->eval();
    return t;
  }();
  return trained;
}

}  // namespace

TEST_CASE("evaluate_vit: clean accuracy and loss are those of the logits") {
  const TrainedTiny& t = trained_tiny();
  ViT& model = *t.model;
  Tensor logits;
  {
    NoGradGuard no_grad;
    logits = model.forward(t.test.images);
  }
  const auto scores = logits.to_vector<float>();
  const auto labels = t.test.labels.to_vector<std::int64_t>();
  std::int64_t correct = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    std::int64_t best = 0;
    for (std::int64_t c = 1; c < 10; ++c)
      if (scores[i * 10 + static_cast<std::size_t>(c)] > scores[i * 10 + static_cast<std::size_t>(best)]) best = c;
    correct += best == labels[i];
  }
  const Accuracy clean = evaluate_vit(model, t.test);
  CHECK(clean.count == 32);
  CHECK(clean.accuracy == static_cast<double>(correct) / 32.0);
  CHECK(clean.accuracy > 0.5);  // learned: chance is 0.25
  CHECK(clean.loss == doctest::Approx(cross_entropy(logits, t.test.labels).item()).epsilon(1e-6));
  // Batching and limits change nothing but what is counted.
  const Accuracy batched = evaluate_vit(model, t.test, {}, 0, 7);
  CHECK(batched.accuracy == clean.accuracy);
  CHECK(batched.loss == doctest::Approx(clean.loss).epsilon(1e-6));
  const Accuracy first = evaluate_vit(model, t.test, {}, 10, 4);
  CHECK(first.count == 10);
  const Accuracy first_ref = evaluate_vit(model, {narrow(t.test.images, 0, 0, 10), narrow(t.test.labels, 0, 0, 10)});
  CHECK(first.accuracy == first_ref.accuracy);
  CHECK(first.loss == doctest::Approx(first_ref.loss).epsilon(1e-6));
  CHECK(evaluate_vit(model, t.test, {}, 1000).count == 32);

  CHECK_ERROR(evaluate_vit(model, t.test, {}, 0, 0), "eval vit", "batch (0)");
  CHECK_ERROR(evaluate_vit(model, t.test, {}, -1), "eval vit", "limit (-1)");
  CHECK_ERROR(evaluate_vit(model, LabeledImages{}), "eval vit", "no images");
  ViTConfig small = tiny_config();
  small.image = 16;
  ViT other(small);
  CHECK_ERROR(evaluate_vit(other, t.test), "vit", "16");
}

TEST_CASE("evaluate_vit: noise and attacks of size 0 are clean; larger ones raise the loss, reproducibly") {
  const TrainedTiny& t = trained_tiny();
  ViT& model = *t.model;
  const Accuracy clean = evaluate_vit(model, t.test);
  for (const char* zero : {"gaussian:0", "fgsm:0", "pgd:0", "pgd:0,3,0.1"}) {
    CAPTURE(zero);
    const Accuracy a = evaluate_vit(model, t.test, Perturbation::parse(zero));
    CHECK(a.accuracy == clean.accuracy);
    CHECK(a.loss == clean.loss);
  }

  Perturbation noise = Perturbation::parse("gaussian:0.3");
  noise.seed = 1;
  const Accuracy noisy = evaluate_vit(model, t.test, noise);
  CHECK(noisy.loss != clean.loss);
  CHECK(evaluate_vit(model, t.test, noise).loss == noisy.loss);
  noise.seed = 2;
  CHECK(evaluate_vit(model, t.test, noise).loss != noisy.loss);

  const Accuracy fgsm = evaluate_vit(model, t.test, Perturbation::parse("fgsm:0.1"));
  Perturbation pgd = Perturbation::parse("pgd:0.1,5");
  pgd.seed = 4;
  const Accuracy pgd1 = evaluate_vit(model, t.test, pgd);
  MESSAGE("clean ", clean.loss, " / ", clean.accuracy, "; fgsm ", fgsm.loss, " / ", fgsm.accuracy, "; pgd ", pgd1.loss,
          " / ", pgd1.accuracy);
  CHECK(fgsm.loss > clean.loss);
  CHECK(fgsm.accuracy <= clean.accuracy);
  CHECK(pgd1.loss > clean.loss);
  CHECK(pgd1.loss >= 0.95 * fgsm.loss);  // PGD is the stronger attack; allow for the random start
  CHECK(pgd1.accuracy <= clean.accuracy);
  const Accuracy pgd2 = evaluate_vit(model, t.test, pgd);
  CHECK(pgd2.loss == pgd1.loss);
  CHECK(pgd2.accuracy == pgd1.accuracy);
  CHECK(evaluate_vit(model, t.test, Perturbation::parse("fgsm:0.1")).loss == fgsm.loss);
  // FGSM is one step: its result is independent of the batching (up to summation order).
  CHECK(evaluate_vit(model, t.test, Perturbation::parse("fgsm:0.1"), 0, 5).loss ==
        doctest::Approx(fgsm.loss).epsilon(1e-5));
}

TEST_CASE("evaluate_vit: attacks leave the parameters, their gradients and the mode as they were") {
  const TrainedTiny& t = trained_tiny();
  ViT& model = *t.model;
  const Perturbation fgsm = Perturbation::parse("fgsm:0.05"), pgd = Perturbation::parse("pgd:0.05,2");
  std::vector<std::vector<float>> before;
  for (const auto& p : model.parameters()) before.push_back(p.to_vector<float>());

  for (const auto& attack : {fgsm, pgd}) {
    evaluate_vit(model, t.test, attack, 16);
    for (const auto& [name, p] : model.named_parameters()) {
      CAPTURE(name);
      CHECK(p.requires_grad());
      CHECK_FALSE(p.grad().defined());
    }
  }
  std::size_t i = 0;
  for (const auto& p : model.parameters()) CHECK(p.to_vector<float>() == before[i++]);

  // Gradients accumulated by training before an evaluation survive it untouched.
  model.train();
  cross_entropy(model.forward(narrow(t.test.images, 0, 0, 4)), narrow(t.test.labels, 0, 0, 4)).backward();
  const auto head_grad = model.parameter("head.weight").grad().to_vector<float>();
  evaluate_vit(model, t.test, fgsm, 8);
  CHECK(model.training());
  CHECK(model.parameter("head.weight").grad().to_vector<float>() == head_grad);
  model.zero_grad();
  model.eval();
  evaluate_vit(model, t.test, pgd, 8);
  CHECK_FALSE(model.training());

  // A parameter frozen on purpose (fine-tuning part of a model) stays frozen after an attack.
  Tensor pos = model.parameter("pos_emb");
  pos.requires_grad_(false);
  evaluate_vit(model, t.test, fgsm, 8);
  CHECK_FALSE(model.parameter("pos_emb").requires_grad());
  CHECK(model.parameter("cls_token").requires_grad());
  pos.requires_grad_(true);

  // Evaluation is often wrapped in a NoGradGuard; the attacks still need (and get) their input gradient.
  const Accuracy outside = evaluate_vit(model, t.test, fgsm, 16);
  {
    NoGradGuard no_grad;
    const Accuracy inside = evaluate_vit(model, t.test, fgsm, 16);
    CHECK(inside.loss == outside.loss);
    CHECK_FALSE(grad_enabled());
  }
  CHECK(grad_enabled());
}

// ---------------------------------------------------------------------------------------------------
// Training.

namespace {

ViTTrainOptions tiny_training(const std::string& data, const std::string& out) {
  ViTTrainOptions o;
  o.data_dir = data;
  o.config = "vit-xs";
  o.epochs = 2;
  o.batch = 16;
  o.limit_train = 64;  // 4 steps per epoch
  o.limit_test = 32;
  o.lr = 1e-3;
  o.warmup_epochs = 0.5;
  o.seed = 7;
  o.out_dir = out;
  return o;
}

struct Metric {
  std::int64_t step = 0, epoch = 0;
  double train_loss = 0, test_loss = 0, test_acc = 0, lr = 0;
};

std::vector<Metric> read_metrics(const std::string& path) {
  std::vector<Metric> out;
  std::istringstream in(read_bytes(path));
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    for (const char* key :
         {"step", "epoch", "train_loss", "test_loss", "test_acc", "lr", "images_per_s", "elapsed_s"})
      CHECK_MESSAGE(j.contains(key), key);
    out.push_back({j["step"], j["epoch"], j["train_loss"], j["test_loss"], j["test_acc"], j["lr"]});
  }
  return out;
}

// Everything but the timings, which differ from run to run.
void check_same_metrics(const std::vector<Metric>& a, const std::vector<Metric>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    CHECK(a[i].step == b[i].step);
    CHECK(a[i].epoch == b[i].epoch);
    CHECK(a[i].train_loss == b[i].train_loss);
    CHECK(a[i].test_loss == b[i].test_loss);
    CHECK(a[i].test_acc == b[i].test_acc);
    CHECK(a[i].lr == b[i].lr);
  }
}

std::map<std::string, Bytes> run_files(const std::string& dir) {
  std::map<std::string, Bytes> files;
  for (const auto& entry : fs::directory_iterator(dir)) files[entry.path().filename()] = read_bytes(entry.path());
  return files;
}

}  // namespace

TEST_CASE("train_vit: learns the synthetic classes; an interrupted run resumes bit for bit") {
  TempDir dir;
  const std::string data = dir / "data";
  write_dataset(data);

  std::vector<std::int64_t> steps_seen;
  std::vector<ViTEvalRecord> evals;
  const ViTEvalRecord last = train_vit(
      tiny_training(data, dir / "full"),
      [&](const TrainProgress& p) {
        steps_seen.push_back(p.step);
        CHECK(p.steps == 8);
        CHECK(std::isfinite(p.loss));
      },
      [&](const ViTEvalRecord& r) { evals.push_back(r); });
  CHECK(steps_seen == std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7, 8});
  REQUIRE(evals.size() == 2);
  CHECK(last.step == 8);
  CHECK(last.epoch == 2);
  MESSAGE("train loss ", evals[0].train_loss, " -> ", evals[1].train_loss, "; test acc ", evals[0].test_acc, " -> ",
          evals[1].test_acc);
  CHECK(evals[1].train_loss < evals[0].train_loss);
  CHECK(evals[1].test_loss < evals[0].test_loss);
  CHECK(evals[0].train_loss < std::log(10.0) + 0.5);
  CHECK(last.test_acc > 0.5);  // 4 classes: chance is 0.25
  const auto metrics = read_metrics(dir / "full/metrics.jsonl");
  REQUIRE(metrics.size() == 2);
  CHECK(metrics[0].step == 4);
  CHECK(metrics[1].step == 8);
  CHECK(metrics[1].test_acc == last.test_acc);
  CHECK(metrics[1].train_loss == last.train_loss);
  const ViTConfig saved = parse_vit_config_json(read_bytes(dir / "full/config.json"), "config.json");
  CHECK(saved.name == "vit-xs");
  CHECK(saved.attention == "standard");
  // The saved model evaluates to the run's last test numbers.
  const LabeledImages test = load_fashion_mnist(data, "test");
  const Accuracy reloaded = evaluate_vit(*load_vit(dir / "full"), test, {}, 32);
  CHECK(reloaded.accuracy == last.test_acc);
  CHECK(reloaded.loss == last.test_loss);

  // Interrupted mid-epoch 1, resumed to mid-epoch 2, resumed to the end: the same bits as the full run.
  ViTTrainOptions part = tiny_training(data, dir / "resumed");
  part.stop_after = 3;
  CHECK(train_vit(part, nullptr, nullptr).step == 0);  // no evaluation yet
  CHECK_FALSE(fs::exists(dir / "resumed/metrics.jsonl"));
  part.resume = true;
  part.stop_after = 6;
  std::vector<std::int64_t> resumed_steps;
  const auto on_step = [&](const TrainProgress& p) { resumed_steps.push_back(p.step); };
  CHECK(train_vit(part, on_step, nullptr).step == 4);
  part.stop_after = 0;
  const ViTEvalRecord resumed = train_vit(part, on_step, nullptr);
  CHECK(resumed_steps == std::vector<std::int64_t>{4, 5, 6, 7, 8});
  CHECK(resumed.train_loss == last.train_loss);
  CHECK(resumed.test_loss == last.test_loss);
  check_same_metrics(read_metrics(dir / "resumed/metrics.jsonl"), metrics);
  for (const char* file : {"model.safetensors", "train_state.safetensors", "config.json"}) {
    CAPTURE(file);
    CHECK(read_bytes(dir / "resumed/" + file) == read_bytes(dir / "full/" + file));
  }

  // Misuse. A fresh run into a directory holding one is refused and changes nothing there.
  const auto files_before = run_files(dir / "full");
  CHECK_ERROR(train_vit(tiny_training(data, dir / "full"), nullptr, nullptr), dir / "full", "already holds a run",
              "the resume option");
  CHECK(run_files(dir / "full") == files_before);
  ViTTrainOptions other = tiny_training(data, dir / "full");
  other.resume = true;
  other.lr = 2e-3;
  CHECK_ERROR(train_vit(other, nullptr, nullptr), "lr=0.002", "same options");
  other = tiny_training(data, dir / "full");
  other.resume = true;
  other.augment = true;
  CHECK_ERROR(train_vit(other, nullptr, nullptr), "augment=true");
  other = tiny_training(data, dir / "full");
  other.resume = true;
  other.attention = "elliptical";
  CHECK_ERROR(train_vit(other, nullptr, nullptr), "resuming", "the options ask for", "elliptical");
  other = tiny_training(data, dir / "full");
  other.resume = true;
  other.config = "vit-s";
  CHECK_ERROR(train_vit(other, nullptr, nullptr), "resuming", "the options ask for vit-s");
  CHECK(run_files(dir / "full") == files_before);
  ViTTrainOptions nothing = tiny_training(data, dir / "nothing");
  nothing.resume = true;
  CHECK_ERROR(train_vit(nothing, nullptr, nullptr), "config.json");
  ViTTrainOptions past_end = tiny_training(data, dir / "past");
  past_end.stop_after = 9;
  CHECK_ERROR(train_vit(past_end, nullptr, nullptr), "stop_after 9", "last step 8");
  ViTTrainOptions big_batch = tiny_training(data, dir / "big");
  big_batch.batch = 65;
  CHECK_ERROR(train_vit(big_batch, nullptr, nullptr), "64 training images", "batch of 65");
  ViTTrainOptions no_epochs = tiny_training(data, dir / "zero");
  no_epochs.epochs = 0;
  CHECK_ERROR(train_vit(no_epochs, nullptr, nullptr), "epochs (0)");
  ViTTrainOptions no_out = tiny_training(data, "");
  CHECK_ERROR(train_vit(no_out, nullptr, nullptr), "output directory");
  // Missing data fails before the run directory is made.
  CHECK_ERROR(train_vit(tiny_training(dir / "nodata", dir / "nodata_run"), nullptr, nullptr), "dataset-fashion-mnist");
  CHECK_FALSE(fs::exists(dir / "nodata_run"));
}

TEST_CASE("train_vit: augmentation changes the run, deterministically") {
  TempDir dir;
  const std::string data = dir / "data";
  write_dataset(data, 64, 16);
  auto one_epoch = [&](const std::string& out, bool augment) {
    ViTTrainOptions o = tiny_training(data, dir / out);
    o.epochs = 1;
    o.limit_train = 32;  // 2 steps
    o.limit_test = 16;
    o.augment = augment;
    train_vit(o, nullptr, nullptr);
    return read_bytes(dir / out + "/model.safetensors");
  };
  const Bytes plain = one_epoch("plain", false), a1 = one_epoch("a1", true), a2 = one_epoch("a2", true);
  CHECK(a1 == a2);
  CHECK(a1 != plain);
}

// ---------------------------------------------------------------------------------------------------
// The command line.

TEST_CASE("cli: train vit and eval vit on synthetic files; bad flags exit 2 or 1 with a message") {
  TempDir dir;
  const std::string data = dir / "data", out = dir / "run";
  write_dataset(data, 64, 32);

  // Two epochs of two steps, stopped at the end of the first (which must not read as done), then resumed.
  const std::vector<std::string> train_args{"train", "vit", "--data", data, "--config", "vit-xs", "--attn",
                                            "elliptical", "--epochs", "2", "--batch", "16", "--limit-train", "32",
                                            "--limit-test", "16"};
  auto with = [&](std::vector<std::string> args, const std::vector<std::string>& extra) {
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  const Run first = run_ellipse(with(train_args, {"--out", out, "--stop-after", "2"}));
  INFO(first.err);
  REQUIRE(first.status == 0);
  CHECK(first.out.find("epoch 1 (step 2)") != std::string::npos);
  CHECK(first.out.find("stopped after step 2") != std::string::npos);
  CHECK(first.out.find("done") == std::string::npos);
  const Run train = run_ellipse(with(train_args, {"--resume", out}));
  INFO(train.err);
  REQUIRE(train.status == 0);
  CHECK(train.out.find("done: epoch 2") != std::string::npos);
  for (const char* file : {"model.safetensors", "config.json", "train_state.safetensors", "metrics.jsonl"})
    CHECK_MESSAGE(fs::exists(out + "/" + file), file);
  CHECK(read_metrics(out + "/metrics.jsonl").size() == 2);
  CHECK(parse_vit_config_json(read_bytes(out + "/config.json"), "config.json").attention ==
        "elliptical");

  auto eval_json = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> args{"eval", "vit", "--model", out, "--data", data};
    args.insert(args.end(), extra.begin(), extra.end());
    const Run run = run_ellipse(args);
    INFO(run.err);
    REQUIRE(run.status == 0);
    const auto json = nlohmann::ordered_json::parse(run.out);
    std::vector<std::string> keys;
    for (const auto& item : json.items()) keys.push_back(item.key());
    CHECK(keys == std::vector<std::string>{"model", "config", "attn", "m_mode", "perturbation", "images", "accuracy",
                                           "loss"});
    CHECK(json["model"] == "vit");
    CHECK(json["config"] == "vit-xs");
    CHECK(json["attn"] == "elliptical");
    CHECK(json["m_mode"] == "sequence");
    CHECK(json["accuracy"].get<double>() >= 0.0);
    CHECK(json["accuracy"].get<double>() <= 1.0);
    CHECK(std::isfinite(json["loss"].get<double>()));
    return json;
  };
  const auto clean = eval_json({});
  CHECK(clean["perturbation"] == "clean");
  CHECK(clean["images"] == 32);
  // 20 PGD steps (the default) are the costliest part of this file: on 8 images only.
  const auto pgd = eval_json({"--attack", "pgd:8/255", "--limit", "8", "--batch", "4"});
  CHECK(pgd["perturbation"] == fmt::format("pgd:{},20,{}", 8.0 / 255, 2.0 / 255));
  CHECK(pgd["images"] == 8);
  const auto clean8 = eval_json({"--limit", "8"});
  CHECK(pgd["loss"].get<double>() >= clean8["loss"].get<double>());
  const auto noisy = eval_json({"--noise", "gaussian:0.1", "--limit", "8", "--seed", "3"});
  CHECK(noisy["perturbation"] == "gaussian:0.1");
  CHECK(noisy["images"] == 8);

  std::vector<std::string> longer = train_args;
  longer[9] = "3";  // --epochs
  struct Bad {
    std::vector<std::string> args;
    int status;
    std::string message;
  };
  const std::vector<Bad> bad{
      {{"train", "vit", "--data", data, "--epochs", "0", "--out", dir / "e0"}, 2, "--epochs"},
      {{"train", "vit", "--data", data, "--config", "vit-l", "--out", dir / "l"}, 2, "--config"},
      {{"train", "vit", "--data", data, "--attn", "sparse", "--out", dir / "s"}, 2, "--attn"},
      {{"train", "vit", "--data", data, "--resume", dir / "nowhere"}, 2, "--resume"},
      {with(train_args, {"--out", out}), 1, "already holds a run"},
      {with(longer, {"--resume", out}), 1, "same options"},
      {{"train", "vit", "--data", dir / "nodata", "--out", dir / "nd"}, 1, "dataset-fashion-mnist"},
      {{"eval", "vit", "--model", out, "--data", data, "--attack", "bogus"}, 1, "bogus"},
      {{"eval", "vit", "--model", out, "--data", data, "--attack", "fgsm:2"}, 1, "[0, 1]"},
      {{"eval", "vit", "--model", out, "--data", data, "--attack", "gaussian:0.1"}, 1, "--attack expects"},
      {{"eval", "vit", "--model", out, "--data", data, "--attack", "clean"}, 1, "--attack expects"},
      {{"eval", "vit", "--model", out, "--data", data, "--noise", "clean"}, 1, "--noise expects"},
      {{"eval", "vit", "--model", out, "--data", data, "--noise", "fgsm:0.1"}, 1, "--noise expects"},
      {{"eval", "vit", "--model", out, "--data", data, "--noise", "gaussian:0.1", "--attack", "fgsm:0.1"}, 1,
       "not both"},
      {{"eval", "vit", "--model", dir / "missing", "--data", data}, 2, "--model"},
      {{"eval", "vit", "--data", data}, 2, "--model"},
      {{"eval", "vit", "--model", data, "--data", data}, 1, "config.json"},
      {{"eval", "vit", "--model", out, "--data", dir / "nodata"}, 1, "dataset-fashion-mnist"},
      {{"eval", "vit", "--model", out, "--data", data, "--limit", "0"}, 2, "--limit"},
  };
  for (const auto& b : bad) {
    std::string joined;
    for (const auto& a : b.args) joined += a + " ";
    CAPTURE(joined);
    const Run run = run_ellipse(b.args);
    INFO(run.err);
    CHECK(run.status == b.status);
    CHECK(run.err.find(b.message) != std::string::npos);
    if (b.args[0] == "eval") CHECK(run.out.empty());
  }
}

TEST_CASE("image_batch: the images and labels at the indices; augmented, each image mirrored and shifted as "
          "documented, every shift and both mirrors drawn") {
  // 8 x 8 images; image k has one pixel of value k + 1, at row 2, column 1, and label 10 + k.
  constexpr std::int64_t side = 8;
  std::vector<float> pixels(3 * side * side, 0.0f);
  for (std::int64_t k = 0; k < 3; ++k) pixels[static_cast<std::size_t>(k * side * side + 2 * side + 1)] = k + 1.0f;
  const LabeledImages data{.images = from_vector(pixels, {3, side, side}),
                           .labels = from_vector<std::int64_t>({10, 11, 12}, {3})};

  const std::vector<std::int64_t> picks{2, 0, 2};
  const LabeledImages plain = image_batch(data, picks, nullptr, 1);
  CHECK(plain.labels.to_vector<std::int64_t>() == std::vector<std::int64_t>{12, 10, 12});
  CHECK(plain.images.to_vector<float>() == index_select(data.images, 0, from_vector(picks, {3})).to_vector<float>());

  // out[y][x] = in[y + dy][x' + dx] with x' = x, or 7 - x mirrored: the pixel at (2, 1) lands on (2 - dy, 1 - dx),
  // or mirrored on (2 - dy, 6 + dx). The draws, image by image: dy, dx, then the mirror.
  const std::vector<std::int64_t> first(200, 0);
  Generator gen(5), replay(5);
  const std::vector<float> augmented = image_batch(data, first, &gen, 1).images.to_vector<float>();
  std::set<std::tuple<std::int64_t, std::int64_t, bool>> drawn;
  for (std::size_t i = 0; i < first.size(); ++i) {
    const std::int64_t dy = replay.integer(3) - 1, dx = replay.integer(3) - 1;
    const bool mirrored = replay.integer(2) == 1;
    drawn.insert({dy, dx, mirrored});
    std::vector<float> expected(side * side, 0.0f);
    expected[static_cast<std::size_t>((2 - dy) * side + (mirrored ? 6 + dx : 1 - dx))] = 1.0f;
    CAPTURE(i);
    CHECK(std::vector<float>(augmented.begin() + static_cast<std::ptrdiff_t>(i * side * side),
                             augmented.begin() + static_cast<std::ptrdiff_t>((i + 1) * side * side)) == expected);
  }
  CHECK(drawn.size() == 18);  // dy and dx each in {-1, 0, 1}, mirrored or not

  const std::vector<std::int64_t> outside{0, 3};
  CHECK_THROWS_WITH(image_batch(data, outside, nullptr, 1), doctest::Contains("image_batch: index 3 at position 1 is "
                                                                              "not in [0, 3)"));
  CHECK_THROWS_WITH(image_batch(data, picks, &gen, side), doctest::Contains("max_shift 8 is not in [0, 8)"));
  const LabeledImages doubles{.images = data.images.to(DType::f64), .labels = data.labels};
  CHECK_THROWS_WITH(image_batch(doubles, picks, nullptr, 0), doctest::Contains("expected f32 images [N, S, S]"));
  const LabeledImages short_labels{.images = data.images, .labels = narrow(data.labels, 0, 0, 2)};
  CHECK_THROWS_WITH(image_batch(short_labels, picks, nullptr, 0), doctest::Contains("expected i64 labels [3]"));
}

TEST_CASE("perturb_images: noise and attacks stay in [0, 1] and within their budget; FGSM raises the loss") {
  ViT model(tiny_config(), 3);
  model.eval();
  Generator data_gen(8);
  const Tensor images = uniform({6, 28, 28}, 0.0, 1.0, data_gen);
  const Tensor labels = from_vector<std::int64_t>({0, 1, 2, 3, 4, 5}, {6});
  const std::vector<float> clean = images.to_vector<float>();
  // The largest move of any pixel, and whether every pixel is in [0, 1].
  auto moved = [&](const Tensor& perturbed) {
    const std::vector<float> x = perturbed.to_vector<float>();
    double largest = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      CHECK((x[i] >= 0.0f && x[i] <= 1.0f));
      largest = std::max(largest, std::abs(static_cast<double>(x[i]) - clean[i]));
    }
    return largest;
  };
  Generator gen(2);
  using Kind = Perturbation::Kind;
  CHECK(moved(perturb_images(model, images, labels, {}, gen)) == 0.0);
  CHECK(moved(perturb_images(model, images, labels, {.kind = Kind::gaussian, .size = 0.5}, gen)) > 0.5);
  const float eps = 0.05f;
  for (const std::int64_t steps : {0, 3}) {  // PGD's random start alone, then three steps
    CAPTURE(steps);
    const Perturbation attack{.kind = Kind::pgd, .size = eps, .steps = steps};
    const double pgd = moved(perturb_images(model, images, labels, attack, gen));
    CHECK(pgd <= eps * (1 + 1e-6));
    CHECK(pgd > eps / 2);
  }
  const Tensor fgsm = perturb_images(model, images, labels, {.kind = Kind::fgsm, .size = eps}, gen);
  CHECK(moved(fgsm) == doctest::Approx(eps).epsilon(1e-6));
  {
    NoGradGuard no_grad;
    CHECK(cross_entropy(model.forward(fgsm), labels).item() > cross_entropy(model.forward(images), labels).item());
  }
  for (const auto& p : model.parameters()) {
    CHECK(p.requires_grad());
    CHECK_FALSE(p.grad().defined());
  }
  CHECK_THROWS_WITH(perturb_images(model, images.to(DType::f64), labels, {}, gen),
                    doctest::Contains("perturb_images: expected f32 images [B, S, S], got f64 [6, 28, 28]"));
  CHECK_THROWS_WITH(perturb_images(model, images, narrow(labels, 0, 0, 5), {}, gen),
                    doctest::Contains("expected i64 labels [6], one per image, got i64 [5]"));
}
