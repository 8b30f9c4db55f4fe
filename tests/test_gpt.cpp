// The character GPT: presets and parameter names (the checkpoint format), UTF-8 and the
// tokenizer, data splitting and sampling, checkpoints and config.json, and training end to end with an
// exact resume.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/io/file.hpp"
#include "core/io/safetensors.hpp"
#include "helpers.hpp"
#include "models/checkpoint.hpp"
#include "models/gpt.hpp"
#include "models/gpt_train.hpp"
#include "models/text.hpp"

using namespace ellipse;
namespace fs = std::filesystem;

namespace {

using ellipse::testing::TempDir;


std::string read_bytes(const std::string& path) { return io::read_file(path, std::uint64_t{1} << 30); }

GPTConfig tiny_config(std::string attention = "elliptical", std::int64_t layers = 2) {
  GPTConfig c;
  c.name = "gpt-s";
  c.vocab = 9;
  c.n_layer = layers;
  c.d_model = 16;
  c.n_head = 2;
  c.seq_len = 8;
  c.batch = 2;
  c.attention = attention;
  c.metric = nn::MetricMode::causal;
  return c;
}

std::vector<std::vector<double>> snapshot(const nn::Module& module) {
  std::vector<std::vector<double>> values;
  for (const auto& p : module.parameters()) values.push_back(p.to_vector<double>());
  return values;
}

// A text with a learnable structure: ~3000 characters over 8 distinct ones.
std::string pattern_text(std::size_t length = 3000) {
  const std::string words[] = {"abc ", "bad ", "cab\n", "dace ", "face ", "bead\n"};
  std::string text;
  for (std::size_t i = 0; text.size() < length; ++i) text += words[(i * 7 + i / 3) % 6];
  return text.substr(0, length);
}

void write_text(const std::string& path, const std::string& text) { io::write_file_atomic(path, text); }

}  // namespace

// ---- 6. presets and the parameter names --------------------------------------------------------------

TEST_CASE("gpt: preset parameter counts at V=65, both attention kinds") {
  for (const std::string kind : {"standard", "elliptical"}) {
    CAPTURE(kind);
    GPTConfig s = gpt_preset("gpt-s", 65);
    CHECK(s.n_layer == 4);
    CHECK(s.d_model == 128);
    CHECK(s.n_head == 4);
    CHECK(s.seq_len == 128);
    CHECK(s.batch == 16);
    s.attention = kind;
    CHECK(GPT(s).parameter_count() == 826'368);
    GPTConfig m = gpt_preset("gpt-m", 65);
    CHECK(m.n_layer == 6);
    CHECK(m.d_model == 384);
    CHECK(m.n_head == 6);
    CHECK(m.seq_len == 256);
    CHECK(m.batch == 64);
    m.attention = kind;
    CHECK(GPT(m).parameter_count() == 10'795'776);
  }
  CHECK_ERROR(gpt_preset("gpt-xl", 65), "gpt-xl");
  CHECK_ERROR(gpt_preset("gpt-s", 0), "vocabulary");
}

TEST_CASE("gpt: parameter names and shapes are the checkpoint format, and nothing else") {
  for (const std::string kind : {"standard", "elliptical"}) {
    CAPTURE(kind);
    GPTConfig config = tiny_config(kind);
    config.dropout = 0.1;  // dropout has no parameters
    const std::int64_t v = config.vocab, d = config.d_model, t = config.seq_len;
    std::map<std::string, Shape> expected{{"tok_emb.weight", {v, d}}, {"pos_emb", {t, d}},
                                          {"ln_f.weight", {d}},        {"ln_f.bias", {d}},
                                          {"head.weight", {v, d}}};
    for (int i = 0; i < 2; ++i) {
      const std::string b = "blocks." + std::to_string(i) + ".";
      expected[b + "ln1.weight"] = {d};
      expected[b + "ln1.bias"] = {d};
      expected[b + "attn.qkv.weight"] = {3 * d, d};
      expected[b + "attn.qkv.bias"] = {3 * d};
      expected[b + "attn.proj.weight"] = {d, d};
      expected[b + "attn.proj.bias"] = {d};
      expected[b + "ln2.weight"] = {d};
      expected[b + "ln2.bias"] = {d};
      expected[b + "mlp.fc1.weight"] = {4 * d, d};
      expected[b + "mlp.fc1.bias"] = {4 * d};
      expected[b + "mlp.fc2.weight"] = {d, 4 * d};
      expected[b + "mlp.fc2.bias"] = {d};
    }
    GPT model(config);
    std::map<std::string, Shape> actual;
    for (const auto& [name, p] : model.named_parameters()) {
      CHECK_MESSAGE(actual.emplace(name, p.shape()).second, "duplicate name ", name);
      CHECK(p.dtype() == DType::f32);
      CHECK(p.requires_grad());
    }
    CHECK(actual == expected);
    CHECK(model.named_parameters().size() == expected.size());
    // Blocks 1.. are elliptical when asked, block 0 never.
    CHECK(dynamic_cast<nn::EllipticalAttention*>(&model.block(0).attention()) == nullptr);
    CHECK((dynamic_cast<nn::EllipticalAttention*>(&model.block(1).attention()) != nullptr) ==
          (kind == "elliptical"));
  }
}

TEST_CASE("named_modules and module: every layer by its dotted name, typed, with errors naming the name") {
  GPT model(tiny_config("elliptical"));
  std::vector<std::string> names;
  for (const auto& [name, module] : model.named_modules()) {
    CHECK(module != nullptr);
    names.push_back(name);
  }
  REQUIRE_FALSE(names.empty());
  CHECK(names.front().empty());  // the model itself
  CHECK(std::count(names.begin(), names.end(), "blocks.1.attn") == 1);
  CHECK(std::count(names.begin(), names.end(), "blocks.0.mlp.fc1") == 1);
  // Every parameter's dotted name is a module's name plus its own.
  for (const auto& [name, p] : model.named_parameters()) {
    const std::string owner = name.find('.') == std::string::npos ? "" : name.substr(0, name.rfind('.'));
    CHECK_MESSAGE(std::count(names.begin(), names.end(), owner) == 1, name);
  }
  // A probe reaches a layer by name: the second block's attention is elliptical and keeps its metric.
  auto& attention = model.module<nn::EllipticalAttention>("blocks.1.attn");
  CHECK(&attention == &model.block(1).attention());
  (void)model.forward(zeros({1, 4}, DType::i64));
  CHECK(attention.last_metric().defined());
  CHECK(&model.module("blocks.0.ln1") == &model.block(0).module("ln1"));
  CHECK_ERROR(model.module("blocks.9.attn"), "Module::module: no module named 'blocks.9.attn'");
  CHECK_ERROR(model.module<nn::EllipticalAttention>("blocks.0.attn"), "'blocks.0.attn' is not of the requested type");
}

TEST_CASE("gpt: forward shapes, seeds and input checks") {
  GPT a(tiny_config(), 3), b(tiny_config(), 3), c(tiny_config(), 4);
  const Tensor ids = from_vector<std::int64_t>({1, 2, 3, 4, 5, 6, 7, 8, 0, 1}, {2, 5});
  const Tensor logits = a.forward(ids);
  CHECK(logits.shape() == Shape{2, 5, 9});
  CHECK(logits.to_vector<double>() == b.forward(ids).to_vector<double>());
  CHECK(logits.to_vector<double>() != c.forward(ids).to_vector<double>());
  CHECK_ERROR(a.forward(zeros({2, 9}, DType::i64)), "gpt", "9", "8");
  CHECK_ERROR(a.forward(zeros({2, 3})), "gpt", "i64");
  CHECK_ERROR(a.forward(zeros({6}, DType::i64)), "gpt", "[6]");
}

// ---- 7. text: UTF-8, the tokenizer, splitting and sampling ---------------------------------------------

TEST_CASE("text: strict UTF-8 decoding names the source and the byte offset") {
  CHECK(decode_utf8("a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80z", "t") == U"a\u00E9\u20AC\U0001F600z");
  CHECK(decode_utf8("", "t").empty());
  CHECK(decode_utf8("\xF4\x8F\xBF\xBF", "t") == U"\U0010FFFF");  // the largest code point
  CHECK(decode_utf8("\xED\x9F\xBF\xEE\x80\x80", "t") == U"\uD7FF\uE000");  // either side of the surrogates
  const std::u32string all = U"x\u0080\u07FF\u0800\uFFFF\U00010000\U0010FFFF";
  CHECK(decode_utf8(encode_utf8(all), "t") == all);
  CHECK(encode_utf8(U"\u00E9") == "\xC3\xA9");

  CHECK_ERROR(decode_utf8("ab\xC0\xAF", "doc.txt"), "doc.txt", "byte offset 2", "overlong");
  CHECK_ERROR(decode_utf8("abc\xE0\x80\xAF", "doc.txt"), "doc.txt", "byte offset 3", "overlong");
  CHECK_ERROR(decode_utf8("\xF0\x8F\xBF\xBF", "doc.txt"), "byte offset 0", "overlong");
  CHECK_ERROR(decode_utf8("x\xED\xA0\x80", "doc.txt"), "doc.txt", "byte offset 1", "surrogate");
  CHECK_ERROR(decode_utf8("xy\xED\xBF\xBF", "doc.txt"), "byte offset 2", "surrogate");
  CHECK_ERROR(decode_utf8("abcd\xE2\x82", "doc.txt"), "doc.txt", "byte offset 4", "truncated");
  CHECK_ERROR(decode_utf8("\xF0\x9F\x98", "doc.txt"), "byte offset 0", "truncated");
  CHECK_ERROR(decode_utf8("\xC3", "doc.txt"), "byte offset 0", "truncated");
  CHECK_ERROR(decode_utf8("a\xC3(", "doc.txt"), "byte offset 1", "continuation");
  CHECK_ERROR(decode_utf8("hello\x80", "doc.txt"), "doc.txt", "byte offset 5", "leading byte");
  CHECK_ERROR(decode_utf8("\xFF", "doc.txt"), "byte offset 0", "leading byte");
  CHECK_ERROR(decode_utf8("ok\xF8\x88\x80\x80\x80", "doc.txt"), "byte offset 2", "leading byte");
  CHECK_ERROR(decode_utf8("\xE2\x82\xAC\xF4\x90\x80\x80", "doc.txt"), "doc.txt", "byte offset 3", "U+10FFFF");
  CHECK_ERROR(decode_utf8("\xF7\xBF\xBF\xBF", "doc.txt"), "byte offset 0", "U+10FFFF");
}

TEST_CASE("text: the tokenizer maps sorted unique code points to ids") {
  const std::u32string text = U"hello, w\u00F6rld \U0001F600!\nhello";
  const CharTokenizer tokenizer = CharTokenizer::from_text(text);
  const std::u32string& vocab = tokenizer.vocab();
  CHECK(vocab == U"\n !,dehlorw\u00F6\U0001F600");
  CHECK(tokenizer.size() == static_cast<std::int64_t>(vocab.size()));
  const auto ids = tokenizer.encode(text);
  CHECK(ids.size() == text.size());
  CHECK(ids[0] == static_cast<std::int64_t>(vocab.find(U'h')));
  CHECK(tokenizer.decode(ids) == text);
  for (std::size_t i = 0; i < vocab.size(); ++i) CHECK(tokenizer.encode(vocab.substr(i, 1))[0] == std::int64_t(i));

  const CharTokenizer same = CharTokenizer::from_vocab(vocab);
  CHECK(same.encode(text) == ids);
  const CharTokenizer reordered = CharTokenizer::from_vocab(U"ba");
  CHECK(reordered.encode(U"ab") == std::vector<std::int64_t>{1, 0});

  CHECK_ERROR(tokenizer.encode(U"hello?"), "'?'", "U+003F", "position 5");
  CHECK_ERROR(tokenizer.encode(U"h\u00E9"), "U+00E9", "position 1");
  CHECK_ERROR(tokenizer.decode({0, 13}), "13");
  CHECK_ERROR(tokenizer.decode({-1}), "-1");
  CHECK_ERROR(CharTokenizer::from_vocab(U"abca"), "U+0061", "twice");
  CHECK_ERROR(CharTokenizer::from_vocab(U""), "empty");
}

TEST_CASE("text: 90/10 split and deterministic shifted windows") {
  std::vector<std::int64_t> ids(1000);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>(i);
  const TextSplit split = split_train_val(ids);
  CHECK(split.train.size() == 900);
  CHECK(split.val.size() == 100);
  CHECK(split.train.front() == 0);
  CHECK(split.train.back() == 899);
  CHECK(split.val.front() == 900);
  CHECK(split.val.back() == 999);
  const TextSplit odd = split_train_val(std::vector<std::int64_t>(15, 1));
  CHECK(odd.train.size() == 13);
  CHECK(odd.val.size() == 2);

  Generator g1(5), g2(5), g3(6);
  const auto [x1, y1] = sample_windows(ids, 4, 16, g1);
  const auto [x2, y2] = sample_windows(ids, 4, 16, g2);
  const auto [x3, y3] = sample_windows(ids, 4, 16, g3);
  CHECK(x1.shape() == Shape{4, 16});
  CHECK(y1.shape() == Shape{4, 16});
  CHECK(x1.dtype() == DType::i64);
  CHECK(x1.to_vector<std::int64_t>() == x2.to_vector<std::int64_t>());
  CHECK(y1.to_vector<std::int64_t>() == y2.to_vector<std::int64_t>());
  CHECK(x1.to_vector<std::int64_t>() != x3.to_vector<std::int64_t>());
  // Each row is a contiguous window ids[o, o+T) and its target ids[o+1, o+T+1).
  const auto xs = x1.to_vector<std::int64_t>(), ys = y1.to_vector<std::int64_t>();
  for (std::size_t b = 0; b < 4; ++b) {
    const std::int64_t o = xs[b * 16];
    CHECK(o >= 0);
    CHECK(o + 16 < 1000);
    for (std::size_t j = 0; j < 16; ++j) {
      CHECK(xs[b * 16 + j] == o + static_cast<std::int64_t>(j));
      CHECK(ys[b * 16 + j] == o + static_cast<std::int64_t>(j) + 1);
    }
  }
  // Windows reach the last token as a target, never past it.
  const std::vector<std::int64_t> short_ids{0, 1, 2, 3, 4};
  Generator g4(1);
  for (int i = 0; i < 20; ++i) {
    const auto [x, y] = sample_windows(short_ids, 1, 4, g4);
    CHECK(x.to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 1, 2, 3});
    CHECK(y.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 2, 3, 4});
  }
  CHECK_ERROR(sample_windows(short_ids, 1, 5, g4), "sample_windows", "5");
}

// ---- 8. checkpoints and config.json --------------------------------------------------------------------

TEST_CASE("checkpoint: parameters round trip; bad files are rejected without touching the model") {
  TempDir dir;
  GPT a(tiny_config(), 1), b(tiny_config(), 2);
  a.eval();
  b.eval();
  const Tensor ids = from_vector<std::int64_t>({1, 2, 3, 4, 5, 6, 7, 8}, {1, 8});
  const std::string good = dir / "model.safetensors";
  save_parameters(good, a);
  CHECK(b.forward(ids).to_vector<double>() != a.forward(ids).to_vector<double>());
  load_parameters(good, b);
  CHECK(b.forward(ids).to_vector<double>() == a.forward(ids).to_vector<double>());
  CHECK(snapshot(b) == snapshot(a));

  // Files written from a's parameters with one change each; every load into c must fail and leave c as it was.
  GPT c(tiny_config(), 3);
  const auto before = snapshot(c);
  auto write_variant = [&](const std::string& name, auto&& edit) {
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto& [key, p] : a.named_parameters()) tensors.emplace_back(key, p.detach());
    edit(tensors);
    const std::string path = dir / name;
    io::save_safetensors(path, tensors);
    return path;
  };
  auto erase = [](std::vector<std::pair<std::string, Tensor>>& tensors, const std::string& key) {
    std::erase_if(tensors, [&](const auto& entry) { return entry.first == key; });
  };
  const std::string missing = write_variant("missing.safetensors", [&](auto& t) { erase(t, "blocks.1.attn.proj.bias"); });
  CHECK_ERROR(load_parameters(missing, c), missing, "blocks.1.attn.proj.bias", "missing");
  const std::string shape = write_variant("shape.safetensors", [&](auto& t) {
    erase(t, "ln_f.weight");
    t.emplace_back("ln_f.weight", zeros({17}));
  });
  CHECK_ERROR(load_parameters(shape, c), shape, "ln_f.weight", "[17]", "[16]");
  const std::string extra =
      write_variant("extra.safetensors", [&](auto& t) { t.emplace_back("blocks.2.attn.qkv.weight", zeros({48, 16})); });
  CHECK_ERROR(load_parameters(extra, c), extra, "blocks.2.attn.qkv.weight");
  const std::string renamed = write_variant("renamed.safetensors", [&](auto& t) {
    erase(t, "head.weight");
    t.emplace_back("head.weights", zeros({9, 16}));
  });
  CHECK_ERROR(load_parameters(renamed, c), renamed, "head.weight");
  const std::string integer = write_variant("integer.safetensors", [&](auto& t) {
    erase(t, "pos_emb");
    t.emplace_back("pos_emb", zeros({8, 16}, DType::i64));
  });
  CHECK_ERROR(load_parameters(integer, c), integer, "pos_emb");
  CHECK_ERROR(load_parameters(dir / "absent.safetensors", c), "absent.safetensors");
  CHECK(snapshot(c) == before);

  // A model of another shape cannot load it either.
  GPT wide(tiny_config("elliptical", 3), 0);
  const auto wide_before = snapshot(wide);
  CHECK_ERROR(load_parameters(good, wide), good, "blocks.2");
  CHECK(snapshot(wide) == wide_before);
}

TEST_CASE("checkpoint: config.json round trip and validation") {
  GPTConfig config = tiny_config();
  config.name = "gpt-m";
  config.n_layer = 3;
  config.d_model = 24;
  config.n_head = 3;
  config.seq_len = 32;
  config.metric = nn::MetricMode::random;
  config.dropout = 0.25;
  const std::u32string vocab = U"\n \"\\ab\u00E9\u20AC\U0001F600";
  config.vocab = static_cast<std::int64_t>(vocab.size());
  const std::string json = gpt_config_json(config, vocab);
  const auto parsed = parse_gpt_config_json(json, "run/config.json");
  CHECK(parsed.config.name == "gpt-m");
  CHECK(parsed.config.n_layer == 3);
  CHECK(parsed.config.d_model == 24);
  CHECK(parsed.config.n_head == 3);
  CHECK(parsed.config.seq_len == 32);
  CHECK(parsed.config.vocab == config.vocab);
  CHECK(parsed.config.attention == "elliptical");
  CHECK(parsed.config.metric == nn::MetricMode::random);
  CHECK(parsed.config.dropout == 0.25);
  CHECK(parsed.tokenizer.vocab() == vocab);
  CHECK(gpt_config_json(parsed.config, parsed.tokenizer.vocab()) == json);
  for (auto mode : {nn::MetricMode::sequence, nn::MetricMode::causal}) {
    config.metric = mode;
    config.attention = "standard";
    const auto again = parse_gpt_config_json(gpt_config_json(config, vocab), "c.json").config;
    CHECK(again.metric == mode);
    CHECK(again.attention == "standard");
  }

  // Each bad variant is the good text with one edit; the error names the path.
  config = tiny_config();
  const std::string good = gpt_config_json(config, U"abcdefghi");
  CHECK_NOTHROW(parse_gpt_config_json(good, "c.json"));
  auto edited = [&](const std::string& from, const std::string& to) {
    std::string text = good;
    const auto at = text.find(from);
    REQUIRE_MESSAGE(at != std::string::npos, "no '", from, "' in ", good);
    return text.replace(at, from.size(), to);
  };
  const std::string path = "runs/x/config.json";
  CHECK_ERROR(parse_gpt_config_json(edited("\"n_head\": 2,", ""), path), path, "n_head", "missing");
  CHECK_ERROR(parse_gpt_config_json(edited("\"vocab\": \"abcdefghi\",", ""), path), path, "vocab", "missing");
  CHECK_ERROR(parse_gpt_config_json(edited("\"n_layer\": 2", "\"n_layer\": \"2\""), path), path, "n_layer", "integer");
  CHECK_ERROR(parse_gpt_config_json(edited("\"d_model\": 16", "\"d_model\": 16.5"), path), path, "d_model", "integer");
  CHECK_ERROR(parse_gpt_config_json(edited("\"attn\": \"elliptical\"", "\"attn\": 1"), path), path, "attn", "string");
  CHECK_ERROR(parse_gpt_config_json(edited("\"n_layer\": 2", "\"n_layer\": 0"), path), path, "n_layer");
  CHECK_ERROR(parse_gpt_config_json(edited("\"n_head\": 2", "\"n_head\": 3"), path), path, "multiple", "16", "3");
  CHECK_ERROR(parse_gpt_config_json(edited("\"attn\": \"elliptical\"", "\"attn\": \"fancy\""), path), path, "attn",
              "fancy");
  CHECK_ERROR(parse_gpt_config_json(edited("\"m_mode\": \"causal\"", "\"m_mode\": \"global\""), path), path, "m_mode",
              "global");
  CHECK_ERROR(parse_gpt_config_json(edited("\"vocab\": \"abcdefghi\"", "\"vocab\": \"abcdefgha\""), path), path,
              "vocab", "twice");
  CHECK_ERROR(parse_gpt_config_json(edited("\"vocab\": \"abcdefghi\"", "\"vocab\": \"\""), path), path, "vocab");
  CHECK_ERROR(parse_gpt_config_json(edited("\"vocab_size\": 9", "\"vocab_size\": 10"), path), path, "vocab_size");
  CHECK_ERROR(parse_gpt_config_json(edited("\"model\": \"gpt\"", "\"model\": \"vit\""), path), path, "model", "vit");
  CHECK_ERROR(parse_gpt_config_json(edited("\"dropout\": 0.0", "\"dropout\": 1.5"), path), path, "dropout");
  CHECK_ERROR(parse_gpt_config_json("{\"model\": \"gpt\",", path), path);
  CHECK_ERROR(parse_gpt_config_json("[1, 2]", path), path);

  // load_gpt reads a checkpoint directory and reports which file is wrong.
  TempDir dir;
  GPT model(config, 4);
  io::write_file_atomic(dir / "config.json", good);
  save_parameters(dir / "model.safetensors", model);
  const LoadedGPT loaded = load_gpt(dir.str());
  CHECK_FALSE(loaded.model->training());
  CHECK(snapshot(*loaded.model) == snapshot(model));
  CHECK(loaded.tokenizer.vocab() == U"abcdefghi");
  io::write_file_atomic(dir / "config.json", edited("\"n_layer\": 2", "\"n_layer\": 3"));
  CHECK_ERROR(load_gpt(dir.str()), dir / "model.safetensors", "blocks.2");
  fs::remove(dir / "config.json");
  CHECK_ERROR(load_gpt(dir.str()), dir / "config.json");
}

// ---- 9. training end to end ----------------------------------------------------------------------------

namespace {

struct MetricsLine {
  std::int64_t step;
  double train_loss, val_loss, lr;
};

std::vector<MetricsLine> read_metrics(const std::string& path) {
  std::vector<MetricsLine> lines;
  std::istringstream in(read_bytes(path));
  std::string line;
  while (std::getline(in, line)) {
    const auto json = nlohmann::ordered_json::parse(line);
    std::vector<std::string> keys;
    for (const auto& item : json.items()) keys.push_back(item.key());
    CHECK(keys == std::vector<std::string>{"step", "train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s"});
    CHECK(json["tokens_per_s"].get<double>() > 0);
    CHECK(json["elapsed_s"].get<double>() >= 0);
    lines.push_back({json["step"].get<std::int64_t>(), json["train_loss"].get<double>(), json["val_loss"].get<double>(),
                     json["lr"].get<double>()});
  }
  return lines;
}

GPTTrainOptions tiny_training(const std::string& text, const std::string& out) {
  GPTTrainOptions o;
  o.text_path = text;
  o.config = "gpt-s";
  o.attention = "elliptical";
  o.steps = 6;
  o.batch = 2;
  o.warmup = 2;
  o.eval_every = 3;
  o.seed = 11;
  o.out_dir = out;
  return o;
}

}  // namespace

TEST_CASE("train: metrics, checkpoints, an exact resume and evaluation of the saved model") {
  TempDir dir;
  const std::string text_path = dir / "text.txt";
  const std::string text = pattern_text();
  write_text(text_path, text);

  // One uninterrupted run of 6 steps.
  std::vector<std::int64_t> steps_seen;
  std::vector<EvalRecord> evals;
  const GPTTrainOptions full = tiny_training(text_path, dir / "full");
  const EvalRecord last = train_gpt(
      full, [&](const TrainProgress& p) { steps_seen.push_back(p.step); CHECK(p.steps == 6); },
      [&](const EvalRecord& r) { evals.push_back(r); });
  CHECK(steps_seen == std::vector<std::int64_t>{1, 2, 3, 4, 5, 6});
  REQUIRE(evals.size() == 2);
  CHECK(last.step == 6);
  CHECK(std::isfinite(last.train_loss));
  CHECK(std::isfinite(last.val_loss));
  CHECK(last.val_loss > 0);
  CHECK(last.val_loss < 2 * std::log(8.0));
  for (const char* file : {"model.safetensors", "config.json", "train_state.safetensors", "metrics.jsonl"})
    CHECK_MESSAGE(fs::exists(dir / ("full/" + std::string(file))), file);
  const auto metrics = read_metrics(dir / "full/metrics.jsonl");
  REQUIRE(metrics.size() == 2);
  CHECK(metrics[0].step == 3);
  CHECK(metrics[1].step == 6);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(metrics[i].train_loss == evals[i].train_loss);
    CHECK(metrics[i].val_loss == evals[i].val_loss);
    CHECK(metrics[i].lr == evals[i].lr);
  }
  const auto config = parse_gpt_config_json(read_bytes(dir / "full/config.json"), "config.json");
  CHECK(config.config.name == "gpt-s");
  CHECK(config.config.attention == "elliptical");
  CHECK(config.config.metric == nn::MetricMode::causal);
  CHECK(config.tokenizer.vocab() == U"\n abcdef");

  // The same run interrupted after step 3, then resumed: bit-identical losses and parameters.
  GPTTrainOptions first = tiny_training(text_path, dir / "resumed");
  first.stop_after = 3;
  const EvalRecord halfway = train_gpt(first, nullptr, nullptr);
  CHECK(halfway.step == 3);
  CHECK(read_metrics(dir / "resumed/metrics.jsonl").size() == 1);
  GPTTrainOptions second = tiny_training(text_path, dir / "resumed");
  second.resume = true;
  std::vector<std::int64_t> resumed_steps;
  const EvalRecord resumed = train_gpt(
      second,
      [&](const TrainProgress& p) {
        resumed_steps.push_back(p.step);
        // The training time goes on from the checkpoint's metrics line; the time left comes from the pace since
        // the resume, not since step 0.
        CHECK(p.start_step == 3);
        CHECK(p.start_elapsed_s == halfway.elapsed_s);
        CHECK(p.elapsed_s > halfway.elapsed_s);
        CHECK(seconds_left(p) == doctest::Approx((p.elapsed_s - halfway.elapsed_s) / static_cast<double>(p.step - 3) *
                                                 static_cast<double>(6 - p.step)));
      },
      nullptr);
  CHECK(resumed_steps == std::vector<std::int64_t>{4, 5, 6});
  CHECK(resumed.step == 6);
  CHECK(resumed.train_loss == last.train_loss);
  CHECK(resumed.val_loss == last.val_loss);
  const auto resumed_metrics = read_metrics(dir / "resumed/metrics.jsonl");
  REQUIRE(resumed_metrics.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(resumed_metrics[i].step == metrics[i].step);
    CHECK(resumed_metrics[i].train_loss == metrics[i].train_loss);
    CHECK(resumed_metrics[i].val_loss == metrics[i].val_loss);
    CHECK(resumed_metrics[i].lr == metrics[i].lr);
  }
  CHECK(read_bytes(dir / "resumed/model.safetensors") == read_bytes(dir / "full/model.safetensors"));
  CHECK(read_bytes(dir / "resumed/train_state.safetensors") == read_bytes(dir / "full/train_state.safetensors"));
  CHECK(read_bytes(dir / "resumed/config.json") == read_bytes(dir / "full/config.json"));

  // The saved model evaluates to the training's last val_loss.
  LoadedGPT loaded = load_gpt(dir / "full");
  const TextSplit split = split_train_val(loaded.tokenizer.encode(decode_utf8(text, text_path)));
  CHECK(evaluate_gpt(*loaded.model, split.val) == last.val_loss);
  CHECK(evaluate_gpt(*loaded.model, split.val, 1) == doctest::Approx(last.val_loss).epsilon(1e-6));

  // Misuse: a second fresh run into the same directory, a resume with other flags or another model, a
  // text that is too short, and an interruption point past the end.
  CHECK_ERROR(train_gpt(tiny_training(text_path, dir / "full"), nullptr, nullptr), dir / "full", "already");
  GPTTrainOptions other_flags = second;
  other_flags.seed = 12;
  CHECK_ERROR(train_gpt(other_flags, nullptr, nullptr), "seed=12");
  GPTTrainOptions other_model = second;
  other_model.attention = "standard";
  CHECK_ERROR(train_gpt(other_model, nullptr, nullptr), "standard");
  const std::string short_path = dir / "short.txt";
  write_text(short_path, pattern_text(500));
  CHECK_ERROR(train_gpt(tiny_training(short_path, dir / "short"), nullptr, nullptr), short_path, "too few");
  GPTTrainOptions past_end = tiny_training(text_path, dir / "past");
  past_end.stop_after = 7;
  CHECK_ERROR(train_gpt(past_end, nullptr, nullptr), "stop_after 7 must lie in [0, steps 6]");
  GPTTrainOptions no_steps = tiny_training(text_path, dir / "none");
  no_steps.steps = 0;
  CHECK_ERROR(train_gpt(no_steps, nullptr, nullptr), "steps");

  // Sampling continues with characters of the vocabulary, reproducibly.
  SampleOptions sample{.tokens = 130, .temperature = 1.0, .top_k = 3, .seed = 5};  // past the context of 128
  const std::u32string s1 = sample_gpt(*loaded.model, loaded.tokenizer, U"abc", sample);
  CHECK(s1.size() == 130);
  for (char32_t ch : s1) CHECK(loaded.tokenizer.vocab().find(ch) != std::u32string::npos);
  sample.tokens = 12;
  CHECK(sample_gpt(*loaded.model, loaded.tokenizer, U"abc", sample) == s1.substr(0, 12));  // seeded
  const std::u32string greedy = sample_gpt(*loaded.model, loaded.tokenizer, U"a", {.tokens = 20, .temperature = 0});
  CHECK(greedy.size() == 20);
  CHECK_ERROR(sample_gpt(*loaded.model, loaded.tokenizer, U"", sample), "prompt");
  CHECK_ERROR(sample_gpt(*loaded.model, loaded.tokenizer, U"xyz", sample), "'x'");
}

TEST_CASE("training checkpoint: moments of another dtype or shape are refused, naming the file and the tensor") {
  TempDir dir;
  Generator gen(3);
  nn::Linear layer(2, 3, true, gen);
  nn::AdamW optimizer(layer.parameters());
  const std::string good = dir / "good.safetensors";
  save_train_state(good, layer, optimizer, TrainState{});
  REQUIRE_NOTHROW(load_train_state(good, layer, optimizer));
  // The same file with one moment changed: widened to f64 (the parameters are f32), or reshaped.
  auto with_moment = [&](const std::string& name, const Tensor& moment) {
    auto file = io::load_safetensors(good);
    for (auto& [key, tensor] : file.tensors)
      if (key == "adam_m.weight") tensor = moment;
    const std::string path = dir / name;
    io::save_safetensors(path, file.tensors, file.metadata);
    return path;
  };
  const std::string wide = with_moment("f64.safetensors", zeros({3, 2}, DType::f64));
  CHECK_ERROR(load_train_state(wide, layer, optimizer), wide, "'adam_m.weight'", "f64 [3, 2]", "expected f32 [3, 2]");
  const std::string reshaped = with_moment("shape.safetensors", zeros({2, 3}));
  CHECK_ERROR(load_train_state(reshaped, layer, optimizer), reshaped, "'adam_m.weight'", "[2, 3]", "expected f32 [3, 2]");
}
